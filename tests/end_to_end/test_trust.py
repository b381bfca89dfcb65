"""What a training run decides on validation after training (distrinews/training/decisions.py), as its users read
it: calibrated scores from pipeline() and the int8 graph, a confidence floor chosen for a target precision and
applied by `distrinews predict`, per-label thresholds saved and used, and the card and plots that report them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import load_splits
from safetensors.torch import load_file
from test_own_data import multi_label_csv, two_string_labels  # noqa: F401 - the shared runs, as fixtures

from distrinews.cli import main as cli_main


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _logits(model, tokenizer, texts):
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits.double()


def test_the_temperature_is_folded_so_pipeline_returns_calibrated_scores(two_process_run, ag_news_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    output_dir, _ = two_process_run
    metrics = _json(output_dir / "metrics.json")
    (temperature,) = metrics["calibration"]["temperature"]
    saved = AutoModelForSequenceClassification.from_pretrained(output_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir / "model")
    raw = AutoModelForSequenceClassification.from_pretrained(output_dir / "model").eval()
    raw.load_state_dict(load_file(output_dir / "checkpoints" / f"step-{metrics['global_step']:08d}" /
                                  "model.safetensors"))
    texts = list(load_splits(ag_news_dir, validation_fraction=0.1, seed=7)["test"]["text"])
    calibrated, uncalibrated = _logits(saved, tokenizer, texts), _logits(raw, tokenizer, texts)
    assert torch.allclose(calibrated, uncalibrated / temperature, atol=1e-4)
    assert torch.equal(calibrated.argmax(-1), uncalibrated.argmax(-1))  # no answer changes
    classifier = pipeline("text-classification", model=str(output_dir / "model"))
    given = classifier(texts[0], top_k=None)
    expected = (uncalibrated[0] / temperature).softmax(-1)
    assert {s["label"]: s["score"] for s in given} == pytest.approx(
        {saved.config.id2label[i]: float(p) for i, p in enumerate(expected)}, abs=1e-5)


def test_metrics_plots_and_card_report_calibration_before_and_after(two_process_run):
    output_dir, _ = two_process_run
    metrics = _json(output_dir / "metrics.json")
    validation, test = metrics["validation"], metrics["test"]
    for split in (validation, test):
        assert set(split["calibration"]) == {"before", "after"}
        assert set(split["calibration"]["after"]) == {"nll", "brier", "ece"}
        assert len(split["reliability"]["before"]) == 15
        assert [p["coverage"] for p in split["risk_coverage"]] == [1.0, 0.95, 0.9, 0.8]
        assert split["risk_coverage"][0]["accuracy"] == pytest.approx(split["accuracy"])
    # The temperature minimizes validation NLL, so it cannot be worse there than no temperature.
    assert validation["calibration"]["after"]["nll"] <= validation["calibration"]["before"]["nll"]
    assert test["loss"] == pytest.approx(test["calibration"]["after"]["nll"], rel=1e-5)  # folded: the loss is NLL
    for plot in ("reliability.png", "risk_coverage.png"):
        assert (output_dir / "plots" / plot).read_bytes()[:4] == b"\x89PNG"
        assert (output_dir / "model" / plot).is_file()
    card = (output_dir / "model" / "README.md").read_text()
    assert "## Calibration and abstention" in card and "![Reliability diagram" in card
    assert f"| test | {test['calibration']['before']['nll']:.4f} | {test['calibration']['after']['nll']:.4f} |" in card
    assert "No confidence floor is set" in card and "at the edge of the range searched" in card  # tiny: T 0.05


def test_the_int8_graph_serves_the_calibrated_scores(two_process_run, tmp_path):
    from space_support import space_env

    from distrinews.core.modeling import load_classifier
    from distrinews.core.predict import predict_texts
    from distrinews.serving.service import ClassifierService, ServingConfig

    output_dir, _ = two_process_run
    model_dir = shutil.copytree(output_dir / "model", tmp_path / "model")
    service = ClassifierService.load(ServingConfig.from_env(space_env(str(model_dir), tmp_path / "cache",
                                                                      QUANTIZE="int8")))
    assert service.quantization == "int8"
    texts = ["stocks rally as oil slides", "striker scores twice", "new chip doubles speed", "leaders meet on talks"]
    model, tokenizer = load_classifier(str(model_dir))
    for served, torch_answer in zip(service.predict_now(texts), predict_texts(model, tokenizer, texts)):
        assert served.probabilities == pytest.approx(torch_answer.probabilities, abs=0.03)


def test_a_floor_chosen_for_a_target_precision_is_saved_and_applied(two_string_labels, capsys):
    output_dir, _ = two_string_labels
    metrics, config = _json(output_dir / "metrics.json"), _json(output_dir / "model" / "config.json")
    abstention = metrics["abstention"]
    floor = config["abstain_below"]
    assert abstention["target_precision"] == 0.8 and abstention["floor"] == floor and 0 < floor <= 1
    assert abstention["validation"]["accuracy"] >= 0.8
    assert metrics["test"]["at_floor"]["floor"] == floor
    card = (output_dir / "model" / "README.md").read_text()
    assert f"**Confidence floor {floor:.4f}**" in card
    texts = ["ham spam", "ham", "spam spam spam"]
    assert cli_main(["predict", "--model", str(output_dir / "model"), "--json", *texts]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(a["min_confidence"] == floor and a["abstained"] == (a["confidence"] < floor) for a in answers)
    assert all(a["confidence"] == max(a["probabilities"].values()) for a in answers)
    assert cli_main(["predict", "--model", str(output_dir / "model"), "--json", "--min_confidence", "1", *texts]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(a["abstained"] and a["labels"] == [a["label"]] for a in answers)  # the best guess stays
    assert cli_main(["predict", "--model", str(output_dir / "model"), "--json", "--min_confidence", "0", *texts]) == 0
    assert not any(json.loads(line)["abstained"] for line in capsys.readouterr().out.splitlines())


def test_multi_label_thresholds_are_chosen_per_label_and_saved(multi_label_csv):
    output_dir, labels = multi_label_csv
    metrics, config = _json(output_dir / "metrics.json"), _json(output_dir / "model" / "config.json")
    per_label = metrics["decision_threshold"]["per_label"]
    assert list(per_label) == list(labels) and config["decision_thresholds"] == list(per_label.values())
    assert metrics["test"]["thresholds"] == config["decision_thresholds"]
    assert len(config["logit_temperature"] or metrics["calibration"]["temperature"]) == len(labels)
    card = (output_dir / "model" / "README.md").read_text()
    assert "Each label has its own decision threshold" in card
    assert all(f"| {name} | {value:g} |" in card for name, value in per_label.items())
    assert set(metrics["test"]["calibration"]["after"]["ece_per_label"]) == set(labels)
    thresholds = np.array(config["decision_thresholds"])
    assert metrics["test"]["risk_coverage"][0]["accuracy"] == pytest.approx(metrics["test"]["subset_accuracy"])
    assert thresholds.min() > 0 and thresholds.max() < 1

"""The real entry point under a real `accelerate launch` with 2 CPU processes (gloo): conftest's two_process_run,
whose 61 test and 24 validation examples divide by neither 2 processes x 7 per batch, so the last batch is padded
by accelerate and those duplicates must not be counted."""

from __future__ import annotations

import json

from conftest import assert_published_weights_are

EXPECTED_FILES = [
    "model/config.json", "model/model.safetensors", "model/tokenizer.json", "model/tokenizer_config.json",
    "metrics.json", "train_config.json", "log.jsonl", "errors.jsonl", "plots/loss.png", "plots/confusion_matrix.png",
    "plots/reliability.png", "plots/risk_coverage.png",
]


def test_writes_every_output(two_process_run):
    output_dir, _ = two_process_run
    missing = [name for name in EXPECTED_FILES if not (output_dir / name).is_file()]
    assert not missing, f"missing outputs: {missing}"
    assert not list(output_dir.glob("model/*.bin")), "weights must be safetensors only"
    for image in ("plots/loss.png", "plots/confusion_matrix.png"):
        assert (output_dir / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_count_every_example_once(two_process_run):
    output_dir, _ = two_process_run
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["test"]["num_examples"] == 61
    assert metrics["validation"]["num_examples"] == 24  # 10% of 240, stratified
    for split in ("validation", "test"):
        confusion = metrics[split]["confusion_matrix"]
        assert sum(map(sum, confusion)) == metrics[split]["num_examples"]
        assert set(metrics[split]["per_class"]) == {"World", "Sports", "Business", "Sci/Tech"}
        assert 0.0 <= metrics[split]["macro_f1"] <= 1.0
    assert metrics["train"]["num_processes"] == 2
    assert metrics["train"]["distributed_type"] == "MULTI_CPU"
    assert metrics["train"]["total_train_batch_size"] == 16
    # The synthetic classes are separable by their words: a working loop learns well above chance (25%).
    assert metrics["test"]["accuracy"] > 0.5


def test_model_config_carries_label_names(two_process_run):
    output_dir, _ = two_process_run
    config = json.loads((output_dir / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"}
    assert config["label2id"]["Sci/Tech"] == 3


def test_log_is_machine_readable(two_process_run):
    output_dir, _ = two_process_run
    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert train and all({"step", "epoch", "loss", "lr", "samples_per_s", "tokens_per_s"} <= set(r) for r in train)
    assert [r["step"] for r in train] == sorted(r["step"] for r in train)
    evals = [r for r in records if r["type"] == "eval"]
    assert {r["split"] for r in evals} == {"validation", "test"}


def test_saved_config_round_trips(two_process_run, tiny_model):
    output_dir, _ = two_process_run
    saved = json.loads((output_dir / "train_config.json").read_text())
    assert saved["model_name_or_path"] == str(tiny_model)
    assert saved["per_device_train_batch_size"] == 8


def test_the_saved_model_is_the_final_step_by_default(two_process_run):
    output_dir, _ = two_process_run
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["model_selection"] == "last"
    assert metrics["selected_step"] == metrics["global_step"]
    assert metrics["calibration"]["applied"] == "folded into the weights and bias of classifier"
    assert_published_weights_are(output_dir / "checkpoints" / f"step-{metrics['global_step']:08d}" /
                                 "model.safetensors", output_dir)
    assert not (output_dir / "best_model.safetensors").exists()  # nothing chosen on validation, nothing kept


def test_progress_and_logs_come_from_main_process_only(two_process_run):
    _, result = two_process_run
    assert result.stdout.count("test accuracy") + result.stderr.count("test accuracy") == 1

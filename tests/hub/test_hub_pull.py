"""Pull models back by repo id over real HTTP: a real olah mirror serves git repos of a trained model.

Every load runs in a fresh process, because huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when
it is imported (and this test session is offline by default).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO_ROOT, free_port, tiny_train_args
from hub_mirror import HubMirror
from distrinews.cli import main as cli_main
from distrinews.core.modeling import load_classifier
from distrinews.core.predict import predict_texts

REPO_ID = "distrinews-test/ag-news-tiny"
PICKLE_REPO_ID = "distrinews-test/pickle-only"
HEADLINES = ["Striker scores twice as league leaders win the playoff",
             "Shares slide after quarterly earnings miss as investors sell bank stocks"]

LOAD_SCRIPT = r"""
import json, sys
from pathlib import Path
from huggingface_hub import HfApi
from distrinews.core.modeling import ModelLoadError, load_classifier, resolve_model_folder

repo_id, pinned, pickle_repo = sys.argv[1:4]
report = {}
for name, revision in (("main", None), ("pinned", pinned)):
    model, _ = load_classifier(repo_id, revision)
    report[name] = {"snapshot": resolve_model_folder(repo_id, revision).name,
                    "bias": model.classifier.bias.tolist(), "labels": model.config.id2label}
try:
    load_classifier(pickle_repo)
except ModelLoadError as err:
    report["pickle_error"] = str(err)
    report["pickle_downloaded"] = [p.name for p in Path(resolve_model_folder(pickle_repo)).iterdir()]
try:
    load_classifier(repo_id, "0" * 40)
except ModelLoadError as err:
    report["unknown_revision_error"] = str(err)
if len(sys.argv) > 4:  # online: the card's metadata, as the Hub API serves it
    card = HfApi().model_info(repo_id, revision="main").card_data
    report["eval_results"] = [(r.metric_type, r.metric_value, r.dataset_split) for r in card.eval_results]
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def trained_run(tiny_model, ag_news_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("pull-run") / "out"
    # One in-process run is enough here: what is under test is the repo, not the training.
    assert cli_main(["train", *tiny_train_args(tiny_model, ag_news_dir, output_dir, num_train_epochs=1)]) == 0
    return output_dir


@pytest.fixture(scope="module")
def mirror(trained_run, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("olah")
    # A second version of the model with different weights, so a pinned sha visibly matters.
    changed = root / "changed-model"
    shutil.copytree(trained_run / "model", changed)
    weights = load_file(changed / "model.safetensors")
    weights["classifier.bias"] = weights["classifier.bias"] + torch.tensor([3.0, -1.0, -1.0, -1.0])
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    # A repo that holds pickle weights only: must be refused, never unpickled.
    pickle_only = root / "pickle-model"
    model, tokenizer = load_classifier(str(tiny_model))
    model.config.save_pretrained(pickle_only)
    tokenizer.save_pretrained(pickle_only)
    torch.save(model.state_dict(), pickle_only / "pytorch_model.bin")

    # Commit before olah starts: olah keeps its own branch -> commit mapping for file downloads for a while,
    # so a branch it has already served can lag behind a new commit (seen as main serving the old weights).
    server = HubMirror(root / "server")
    first = server.commit(REPO_ID, trained_run / "model", "Add fine-tuned model")
    second = server.commit(REPO_ID, changed, "Shift the classifier bias")
    server.commit(PICKLE_REPO_ID, pickle_only, "Pickle weights only")
    with server:
        yield server, first, second


def _run(args, env_overrides, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env_overrides}
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args[:2]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _report(result) -> dict:
    line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT "))


def test_load_by_repo_id_at_main_and_at_pinned_sha(mirror, trained_run, tmp_path):
    server, first, second = mirror
    hf_home = tmp_path / "hf-home"
    report = _report(_run(["-c", LOAD_SCRIPT, REPO_ID, first, PICKLE_REPO_ID, "online"], server.client_env(hf_home)))

    original_bias = load_file(trained_run / "model" / "model.safetensors")["classifier.bias"].tolist()
    assert report["main"]["snapshot"] == second
    assert report["pinned"]["snapshot"] == first
    assert report["pinned"]["bias"] == pytest.approx(original_bias, abs=1e-6)
    assert report["main"]["bias"] == pytest.approx([original_bias[0] + 3, *(b - 1 for b in original_bias[1:])], abs=1e-5)
    assert report["main"]["labels"] == {"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"}

    assert "only pickle weights" in report["pickle_error"] or "no safetensors weights" in report["pickle_error"]
    assert "safetensors" in report["pickle_error"] and PICKLE_REPO_ID in report["pickle_error"]
    assert "pytorch_model.bin" not in report["pickle_downloaded"]  # never even downloaded
    assert report["unknown_revision_error"].startswith(f"cannot load model '{REPO_ID}' at revision '{'0' * 40}'")

    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert sorted(report["eval_results"]) == sorted([
        ["accuracy", round(metrics["test"]["accuracy"], 4), "test"],
        ["f1", round(metrics["test"]["macro_f1"], 4), "test"]])

    # The same loads work offline from the HF cache, with the "Hub" unreachable.
    offline = {**server.client_env(hf_home), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    offline_report = _report(_run(["-c", LOAD_SCRIPT, REPO_ID, first, PICKLE_REPO_ID], offline))
    assert offline_report["main"] == report["main"] and offline_report["pinned"] == report["pinned"]


def test_predict_cli_by_repo_id_matches_the_local_model(mirror, trained_run, tmp_path):
    server, first, _ = mirror
    result = _run(["-m", "distrinews", "predict", "--model", REPO_ID, "--revision", first, "--json", *HEADLINES],
                  server.client_env(tmp_path / "hf-home"))
    remote = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    model, tokenizer = load_classifier(str(trained_run / "model"))
    local = predict_texts(model, tokenizer, HEADLINES)
    assert [r["text"] for r in remote] == HEADLINES
    for remote_prediction, local_prediction in zip(remote, local):
        assert remote_prediction["label"] == local_prediction.label
        assert remote_prediction["probabilities"] == pytest.approx(local_prediction.probabilities, abs=1e-5)


def test_unknown_repo_fails_with_one_clear_line(mirror, tmp_path):
    server, _, _ = mirror
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **server.client_env(tmp_path / "hf-home")}
    missing = f"{REPO_ID}-missing"
    result = subprocess.run([sys.executable, "-m", "distrinews", "predict", "--model", missing, "Some headline"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: cannot load model '{missing}': it is not a local folder"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_mirror_commit_holds_new_content_of_the_same_size_and_mtime(tmp_path):
    """copytree keeps mtimes: new weights of the same size written in the same second as the old ones must
    still be committed (git's stat cache alone would keep the old blob)."""
    for name, byte in (("old", b"A"), ("new", b"B")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(byte * 1000)
        os.utime(tmp_path / name / "model.safetensors", (1e9, 1e9))
    mirror = HubMirror(tmp_path / "server")
    mirror.commit(REPO_ID, tmp_path / "old", "old weights")
    mirror.commit(REPO_ID, tmp_path / "new", "new weights")
    assert mirror._git(mirror.mirrors / "models" / REPO_ID, "show", "HEAD:model.safetensors") == "B" * 1000

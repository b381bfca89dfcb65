"""Pushing to the Hub over real HTTP: a 2-process `accelerate launch` run with --push_to_hub, and `distrinews push`.

The real huggingface_hub upload code talks to tests/hub_server.py (Xet off). A fake token is planted in
HF_TOKEN and searched for in everything the runs write or send, except the Authorization header.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from conftest import REPO_ROOT, accelerate_launch, tiny_train_args
from distrinews.training.model_card import build_model_card
from hub_server import FakeHub, assert_token_absent

REPO_ID = "distrinews-test/ag-news-tiny"
# The int8 graph the Space serves travels with the weights, in the same commit.
MODEL_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
               "confusion_matrix.png", "loss.png", "reliability.png", "risk_coverage.png", "onnx/model.int8.onnx",
               "onnx/export.json"}
DDP_TIMEOUT_S = 15
COMMIT_DELAY_S = DDP_TIMEOUT_S + 5  # longer than any collective may wait: a push inside one would fail the run


def _fake_token() -> str:
    return "hf_" + "".join(random.Random().choices(string.ascii_letters, k=34))


def _hub_env(hub: FakeHub, token: str | None, hf_home: Path) -> dict[str, str]:
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(hf_home),
           "HF_TOKEN": token or ""}
    return env


@pytest.fixture(scope="module")
def pushed_run(tiny_model, ag_news_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("push-run")
    output_dir, hf_home = root / "out", root / "hf-home"
    token = _fake_token()
    with FakeHub(token, commit_delay_s=COMMIT_DELAY_S) as hub:
        result = accelerate_launch(
            tiny_train_args(tiny_model, ag_news_dir, output_dir, push_to_hub="true", hub_model_id=REPO_ID,
                            hub_private="true", ddp_timeout_seconds=DDP_TIMEOUT_S),
            extra_env=_hub_env(hub, token, hf_home), timeout=420)
    return output_dir, hf_home, token, hub, result


def test_two_process_run_makes_exactly_one_commit_from_one_process(pushed_run):
    output_dir, _, _, hub, result = pushed_run
    assert len(hub.commits_made()) == 1
    assert [r.path for r in hub.requests if r.path == "/api/repos/create"] == ["/api/repos/create"]
    pids = {r.client_pid for r in hub.requests}
    assert len(pids) == 1 and None not in pids, f"requests came from processes {pids}"
    assert (result.stdout + result.stderr).count("Pushed to ") == 1
    # The commit took longer than DDP_TIMEOUT_S, yet the run succeeded: no rank waited for it in a collective.
    history = hub.repos[REPO_ID].history()
    assert [c.summary.split(",")[0] for c in history] == ["DistriNews: AG News classifier", "initial commit"]


def test_commit_holds_the_model_card_and_images(pushed_run):
    output_dir, _, _, hub, _ = pushed_run
    files = hub.repos[REPO_ID].files("main")
    print("pushed repo contents:\n" + "\n".join(f"  {name}  {len(data):,} bytes" for name, data in sorted(files.items())))
    assert set(files) == MODEL_FILES | {".gitattributes"}
    for name in MODEL_FILES:
        assert files[name] == (output_dir / "model" / name).read_bytes(), name
    assert files["loss.png"] == (output_dir / "plots" / "loss.png").read_bytes()
    assert files["confusion_matrix.png"].startswith(b"\x89PNG")


def test_card_metadata_parses_and_carries_the_test_results(pushed_run):
    output_dir, _, _, hub, _ = pushed_run
    metrics = json.loads((output_dir / "metrics.json").read_text())
    card = ModelCard(hub.repos[REPO_ID].files("main")["README.md"].decode())
    data = card.data
    assert (data.language, data.license, data.library_name, data.pipeline_tag) == \
        ("en", "apache-2.0", "transformers", "text-classification")
    assert data.datasets == ["fancyzhx/ag_news"] and data.metrics == ["accuracy", "f1"]
    assert data.base_model is None  # trained from a local folder: nothing on the Hub to point at
    results = {(r.metric_type, r.dataset_split, r.task_type): r.metric_value for r in data.eval_results}
    assert results == {("accuracy", "test", "text-classification"): round(metrics["test"]["accuracy"], 4),
                       ("f1", "test", "text-classification"): round(metrics["test"]["macro_f1"], 4)}
    assert data.eval_results[0].dataset_type == "fancyzhx/ag_news"

    body = card.text
    assert f'pipeline("text-classification", model="{REPO_ID}")' in body
    assert "![Test confusion matrix](confusion_matrix.png)" in body and "](loss.png)" in body
    assert "| processes (data-parallel replicas) | 2 |" in body
    assert "| effective batch size | 16 " in body and "| mixed precision | no |" in body
    for name, scores in metrics["test"]["per_class"].items():
        assert f"| {name} | {scores['precision']:.4f} | {scores['recall']:.4f} | {scores['f1']:.4f} |" in body
    assert "Character-level Convolutional Networks for Text Classification" in body
    assert "Zhang, Xiang and Zhao, Junbo and LeCun, Yann" in body and "non-commercial" in body
    assert f"torch: {metrics['train']['versions']['torch']}" in body


def test_card_links_a_hub_base_model_and_dataset(pushed_run):
    output_dir = pushed_run[0]
    metrics, config, model_config = (json.loads((output_dir / name).read_text())
                                     for name in ("metrics.json", "train_config.json", "model/config.json"))
    config.update(model_name_or_path="distilbert-base-uncased", dataset="fancyzhx/ag_news")
    card = build_model_card(metrics, config, model_config)
    assert card.data.base_model == "distilbert-base-uncased" and card.data.datasets == ["fancyzhx/ag_news"]
    assert "[`distilbert-base-uncased`](https://huggingface.co/distilbert-base-uncased)" in card.text
    assert "[`fancyzhx/ag_news`](https://huggingface.co/datasets/fancyzhx/ag_news)" in card.text
    assert 'model="USER/NAME"' in card.text  # no repo id yet: a placeholder, explained below the snippet


def test_metrics_record_the_commit(pushed_run):
    output_dir, _, _, hub, result = pushed_run
    record = json.loads((output_dir / "metrics.json").read_text())["hub"]
    head = hub.repos[REPO_ID].branches["main"]
    assert record["commit_sha"] == head and record["repo_id"] == REPO_ID and record["revision"] == "main"
    assert record["private"] is True and hub.repos[REPO_ID].private and record["url"] == f"{hub.endpoint}/{REPO_ID}"
    assert record["commit_url"] == f"{hub.endpoint}/{REPO_ID}/commit/{head}"
    assert head in result.stdout + result.stderr


def test_token_never_leaves_the_authorization_header(pushed_run):
    output_dir, hf_home, token, hub, result = pushed_run
    assert all(r.headers.get("authorization") == f"Bearer {token}" for r in hub.requests
               if not r.path.startswith("/lfs-upload/")), "the planted token was not the one used"
    assert_token_absent(token, [result.stdout, result.stderr], [output_dir, hf_home], hub)


def _push(run_dir: Path, hub: FakeHub, token: str | None, hf_home: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **_hub_env(hub, token, hf_home)}
    return subprocess.run([sys.executable, "-m", "distrinews", "push", str(run_dir), "--repo-id", REPO_ID, *extra],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)


def test_push_command_retries_transient_errors_and_replaces_stale_weights(pushed_run, tmp_path):
    output_dir = pushed_run[0]
    run_dir = shutil.copytree(output_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    token = _fake_token()
    earlier = {"model-00001-of-00002.safetensors": b"old shard", "model.safetensors.index.json": b"{}",
               "pytorch_model.bin": b"old pickle", "notes.md": b"kept",
               # hub_strategy=checkpoint's resumable checkpoint: not the model's weights, so never deleted
               "last-checkpoint/model.safetensors": b"checkpoint weights", "last-checkpoint/COMPLETE": b"8\n"}
    with FakeHub(token) as hub:
        hub.seed(REPO_ID, earlier)
        hub.fail_next("POST", r"^/api/repos/create$", 429)
        hub.fail_next("POST", r"/commit/", 503)
        result = _push(run_dir, hub, token, tmp_path / "hf-home", "--revision", "candidate", "--private")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count("retrying in") == 2 and "HTTP 429" in output and "HTTP 503" in output
    repo = hub.repos[REPO_ID]
    assert json.loads(next(r.body for r in hub.requests if r.path == "/api/repos/create"))["visibility"] == "private"
    assert "already existed as a public repo and stays public" in output  # asked for private, but it existed
    assert len(hub.commits_made()) == 1
    assert [c.summary for c in repo.history("main")] == ["earlier push"]  # the branch got the commit, not main
    # Weights of the earlier push would shadow the new ones (an index beats a single file): they are deleted.
    assert set(repo.files("candidate")) == MODEL_FILES | {".gitattributes", "notes.md", "last-checkpoint/COMPLETE",
                                                          "last-checkpoint/model.safetensors"}
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["revision"] == "candidate" and record["commit_sha"] == repo.branches["candidate"]
    assert record["private"] is False
    assert record["url"].endswith(f"/{REPO_ID}/tree/candidate")
    assert json.loads((run_dir / "metrics.json").read_text())["hub"] == record
    assert_token_absent(token, [output], [run_dir, tmp_path / "hf-home"], hub)


def test_push_replaces_only_its_own_onnx_files(pushed_run, tmp_path):
    """onnx/ is shared with other exports (transformers.js reads onnx/model.onnx, onnx/model_quantized.onnx): the
    push re-exports a stale graph of its own, deletes only its own two files on the Hub, and keeps the rest of
    onnx/, locally and on the Hub."""
    from distrinews.serving.export import EXPORT_RECIPE, SHIPPED_GRAPH, SHIPPED_GRAPH_INFO

    run_dir = shutil.copytree(pushed_run[0], tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    model_dir = run_dir / "model"
    local = {"onnx/model.onnx": b"a transformers.js graph", "onnx/model_quantized.onnx": b"its int8 graph"}
    stale = {SHIPPED_GRAPH: b"a graph of other weights", SHIPPED_GRAPH_INFO: b'{"recipe": "an-older-recipe"}'}
    for name, data in {**local, **stale}.items():
        (model_dir / name).write_bytes(data)
    (model_dir / ".onnx.k1ll3d").mkdir()  # the staging folder of an export killed halfway: never uploaded
    (model_dir / ".onnx.k1ll3d" / "model.int8.onnx").write_bytes(b"half a graph")
    on_hub_only = {"onnx/model_fp16.onnx": b"an fp16 graph", "onnx/model.onnx_data": b"external weights"}
    token = _fake_token()
    with FakeHub(token) as hub:
        hub.seed(REPO_ID, {**on_hub_only, SHIPPED_GRAPH: b"an older graph", SHIPPED_GRAPH_INFO: b"{}",
                           "onnx/model.onnx": b"an older transformers.js graph"})
        result = _push(run_dir, hub, token, tmp_path / "hf-home")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert {name: (model_dir / name).read_bytes() for name in local} == local
    assert json.loads((model_dir / SHIPPED_GRAPH_INFO).read_text())["recipe"] == EXPORT_RECIPE
    assert (model_dir / SHIPPED_GRAPH).read_bytes() != stale[SHIPPED_GRAPH]
    files = hub.repos[REPO_ID].files("main")
    assert set(files) == MODEL_FILES | set(local) | set(on_hub_only) | {".gitattributes"}
    for name in MODEL_FILES | set(local):
        assert files[name] == (model_dir / name).read_bytes(), name
    assert {name: files[name] for name in on_hub_only} == on_hub_only


def test_push_command_auth_errors_are_clear(pushed_run, tmp_path):
    output_dir = pushed_run[0]
    run_dir = shutil.copytree(output_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    wrong_token = _fake_token()
    with FakeHub(_fake_token()) as hub:
        rejected = _push(run_dir, hub, wrong_token, tmp_path / "hf-home")
        missing = _push(run_dir, hub, None, tmp_path / "empty-hf-home")
    assert rejected.returncode == 1
    assert rejected.stderr.startswith(f"error: the Hub rejected the token (HTTP 401) while pushing to {REPO_ID}")
    assert "hf auth login" in rejected.stderr and f"distrinews push {run_dir} --repo_id {REPO_ID}" in rejected.stderr
    assert "Traceback" not in rejected.stderr
    assert missing.returncode == 2 and missing.stderr.startswith("error: no Hugging Face token found")
    assert not hub.commits_made()
    assert_token_absent(wrong_token, [rejected.stdout, rejected.stderr], [run_dir], hub)


def test_training_with_push_fails_before_training_without_a_token(tiny_model, ag_news_dir, tmp_path):
    output_dir = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_TOKEN": "", "HF_HOME": str(tmp_path / "empty-hf-home"),
           "HF_HUB_OFFLINE": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "distrinews.train",
         *tiny_train_args(tiny_model, ag_news_dir, output_dir, push_to_hub="true", hub_model_id=REPO_ID)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 2 and result.stderr.startswith("error: no Hugging Face token found"), result.stderr
    assert not output_dir.exists()


def test_token_from_a_kaggle_secret(tmp_path, monkeypatch):
    # Kaggle's `kaggle_secrets` module exists only on Kaggle; this stand-in has its interface.
    (tmp_path / "kaggle_secrets.py").write_text(
        "class UserSecretsClient:\n"
        "    def get_secret(self, label):\n"
        "        return {'HF_TOKEN': 'hf_fromkaggle'}[label]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    from distrinews.hub.push import resolve_hub_token

    assert resolve_hub_token() == "hf_fromkaggle"

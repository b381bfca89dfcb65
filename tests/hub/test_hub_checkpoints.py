"""Checkpoints on the Hub (hub_strategy=checkpoint) over real HTTP, with real 2-process `accelerate launch` runs.

A run uploads its checkpoints to the local upload endpoint (tests/hub_server.py) and is stopped by SIGTERM, as a
Kaggle session ends. The repo it leaves is then served by a real olah mirror (tests/hub_mirror.py), standing in for
the Hub a new session downloads from: a run in an EMPTY output_dir fetches last-checkpoint/ and must finish with
exactly the weights and per-step losses of an uninterrupted run. The olah mirror is read-only, so that run's own
uploads fail: it must warn and finish anyway. A planted token must never leave the Authorization header. A pickle
planted in that checkpoint must never run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REFERENCE_RUN, REFERENCE_STEPS as TOTAL_STEPS, REPO_ROOT, accelerate_launch, free_port, \
    tiny_train_args
from hub_mirror import HubMirror
from hub_server import FakeHub, assert_token_absent
from planted_pickle import plant_pickle

REPO_ID = "distrinews-test/ag-news-resume"
TOKEN = "hf_" + "CheckpointUploadTestToken0123456789"[:34]
# The reference run's settings (best_validation: the best weights travel in the checkpoint too), with keep_last=1:
# every new checkpoint deletes the previous one, possibly while it is being uploaded.
RUN = dict(REFERENCE_RUN, keep_last=1)
HUB_RUN = dict(RUN, hub_strategy="checkpoint", hub_model_id=REPO_ID)
STOP_AFTER_STEP = 10


def _hub_env(endpoint: str, hf_home: Path, token: str = TOKEN) -> dict[str, str]:
    return {"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(hf_home),
            "HF_TOKEN": token}


def _records(output_dir: Path, kind: str) -> list[dict]:
    path = output_dir / "log.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written right now
    return [r for r in records if r["type"] == kind]


def _checkpoint_commits(repo) -> list:
    """Commits that changed last-checkpoint/, oldest first."""
    history = list(reversed(repo.history()))
    changed = []
    for parent, commit in zip(history, history[1:]):
        before = {k: v for k, v in parent.files.items() if k.startswith("last-checkpoint/")}
        after = {k: v for k, v in commit.files.items() if k.startswith("last-checkpoint/")}
        if before != after:
            changed.append(commit)
    return changed


@pytest.fixture(scope="module")
def reference(reference_run):
    """The uninterrupted run (conftest.py: shared with the fault-injection tests); keep_last does not change it."""
    return reference_run


def _stopped_run(tiny_model, ag_news_dir, root: Path, hub: FakeHub):
    """A 2-process run with hub_strategy=checkpoint, stopped by SIGTERM to the launcher after STOP_AFTER_STEP."""
    output_dir = root / "session-1"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / "accelerate_configs" / "cpu.yaml"), "--num_processes", "2",
               "--main_process_port", str(free_port()), "-m", "distrinews.train",
               *tiny_train_args(tiny_model, ag_news_dir, output_dir, **HUB_RUN)]
    transcript = root / "session-1.out"
    with transcript.open("w") as sink:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, **_hub_env(hub.endpoint, root / "hf-1")},
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while max((r["step"] for r in _records(output_dir, "train")), default=0) < STOP_AFTER_STEP:
            assert process.poll() is None, transcript.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run did not reach the step to stop at"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)  # what a preempted job gets; the launcher forwards it to the ranks
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return output_dir, transcript.read_text()


@pytest.fixture(scope="module")
def sessions(reference, tiny_model, ag_news_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-resume")
    with FakeHub(TOKEN) as hub:
        first_dir, first_output = _stopped_run(tiny_model, ag_news_dir, root, hub)

    # The repo as the upload left it, served for download by a real mirror; a new session with an empty output_dir.
    published = root / "published"
    for name, data in hub.repos[REPO_ID].files("main").items():
        if name != ".gitattributes":  # LFS attributes mean nothing to the mirror's plain git repo
            (published / name).parent.mkdir(parents=True, exist_ok=True)
            (published / name).write_bytes(data)
    mirror = HubMirror(root / "mirror")
    mirror.commit(REPO_ID, published, "as uploaded by the first session")
    second_dir = root / "session-2"
    with mirror:
        started = time.monotonic()
        second = accelerate_launch(tiny_train_args(tiny_model, ag_news_dir, second_dir, **HUB_RUN),
                                   extra_env=_hub_env(mirror.endpoint, root / "hf-2"), timeout=420)
        second_seconds = time.monotonic() - started
    return dict(hub=hub, first_dir=first_dir, first_output=first_output, second_dir=second_dir,
                second_output=second.stdout + second.stderr, second_seconds=second_seconds, root=root)


def test_stopped_session_left_its_newest_checkpoint_on_the_hub(sessions):
    hub, first_dir, output = sessions["hub"], sessions["first_dir"], sessions["first_output"]
    (stopped,) = _records(first_dir, "stopped")  # the graceful stop of preemption.py, with its own checkpoint
    assert f"Stopped at step {stopped['step']} of {TOTAL_STEPS} on SIGTERM" in output, output[-3000:]
    repo = hub.repos[REPO_ID]
    files = repo.files("main")
    assert files["last-checkpoint/COMPLETE"] == f"{stopped['step']}\n".encode()  # the stop's own checkpoint
    local = first_dir / "checkpoints" / f"step-{stopped['step']:08d}"
    for path in local.iterdir():
        assert files[f"last-checkpoint/{path.name}"] == path.read_bytes(), path.name
    assert "log.jsonl" in {name.split("/")[-1] for name in files}
    assert set(files) - {".gitattributes"} == {f"last-checkpoint/{name}" for name in
                                               [p.name for p in local.iterdir()] + ["log.jsonl"]}
    commits = _checkpoint_commits(repo)
    steps = [int(c.summary.removeprefix("Checkpoint at step ")) for c in commits]
    print(f"first session: stopped at step {stopped['step']}; {len(commits)} checkpoint upload(s) to "
          f"last-checkpoint/, of steps {steps}")
    assert steps == sorted(steps) and steps[-1] == stopped["step"] and len(steps) >= 1
    assert "No checkpoint on the Hub: distrinews-test/ag-news-resume does not exist" in output
    assert output.count("Uploaded the checkpoint of step") == len(steps)
    # Uploads came from one process only (the main one).
    assert len({r.client_pid for r in hub.requests}) == 1


def test_new_session_in_an_empty_output_dir_continues_the_run_exactly(sessions, reference):
    second_dir, output = sessions["second_dir"], sessions["second_output"]
    (stopped,) = _records(sessions["first_dir"], "stopped")
    assert f"Fetched step-{stopped['step']:08d} from {REPO_ID}/last-checkpoint" in output
    assert [r["step"] for r in _records(second_dir, "resume")] == [stopped["step"]]
    for name in ("model/model.safetensors", "best_model.safetensors",
                 f"checkpoints/step-{TOTAL_STEPS:08d}/model.safetensors"):
        ours, theirs = load_file(second_dir / name), load_file(reference / name)
        assert ours.keys() == theirs.keys()
        different = [key for key in ours if not torch.equal(ours[key], theirs[key])]
        assert not different, f"{name} differs from the uninterrupted run in {different}"
    # The log came along with the checkpoint: one timeline, every step once, each loss bitwise the reference's,
    # so every step trained on the same batch.
    losses = [[(r["step"], r["loss"]) for r in _records(d, "train")] for d in (second_dir, reference)]
    assert [step for step, _ in losses[0]] == list(range(1, TOTAL_STEPS + 1))
    assert losses[0] == losses[1]
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (second_dir, reference))
    for key in ("validation", "test", "selected_step", "global_step"):
        assert ours[key] == theirs[key], key
    print(f"new session: resumed at step {stopped['step']} from the mirror, finished in "
          f"{sessions['second_seconds']:.0f} s with weights equal to the uninterrupted run")


def test_uploads_to_a_read_only_endpoint_warn_and_training_finishes(sessions):
    output = sessions["second_output"]
    assert "Warning: could not upload the checkpoint of step" in output
    assert (sessions["second_dir"] / "metrics.json").is_file()
    assert not list((sessions["second_dir"] / "checkpoints").glob(".upload-*"))  # snapshots cleaned up


def test_token_never_leaves_the_authorization_header(sessions):
    root = sessions["root"]
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in sessions["hub"].requests
               if not r.path.startswith("/lfs-upload/"))
    assert_token_absent(TOKEN, [sessions["first_output"], sessions["second_output"]],
                        [sessions["first_dir"], sessions["second_dir"], root / "hf-1", root / "hf-2"], sessions["hub"])


# ---- failures and a repo that already holds a model (one process each: what is under test is the Hub traffic)

SHORT_RUN = dict(HUB_RUN, max_steps=6, checkpoint_every=2, logging_steps=2)
EARLIER_MODEL = {"config.json": b'{"model_type": "distilbert"}', "model.safetensors": b"weights of an earlier push",
                 "README.md": b"---\nlicense: apache-2.0\n---\nAn earlier model\n"}


def _train_one_process(tiny_model, ag_news_dir, output_dir: Path, endpoint: str, token: str, run: dict = SHORT_RUN,
                       **overrides):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **_hub_env(endpoint, output_dir.parent / "hf-home", token)}
    result = subprocess.run(
        [sys.executable, "-m", "distrinews.train",
         *tiny_train_args(tiny_model, ag_news_dir, output_dir, **{**run, **overrides})],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    return result, result.stdout + result.stderr


def test_uploads_touch_only_last_checkpoint_of_a_repo_that_holds_a_model(tiny_model, ag_news_dir, tmp_path):
    with FakeHub(TOKEN) as hub:
        hub.seed(REPO_ID, EARLIER_MODEL)
        result, output = _train_one_process(tiny_model, ag_news_dir, tmp_path / "out", hub.endpoint, TOKEN)
    assert result.returncode == 0, output[-3000:]
    assert f"No checkpoint on the Hub: {REPO_ID} has no last-checkpoint/ folder yet; starting from scratch" in output
    files = hub.repos[REPO_ID].files("main")
    assert {name: files[name] for name in EARLIER_MODEL} == EARLIER_MODEL  # the model at the root is untouched
    assert files["last-checkpoint/COMPLETE"] == b"6\n"
    assert [c.summary for c in _checkpoint_commits(hub.repos[REPO_ID])][-1] == "Checkpoint at step 6"
    assert_token_absent(TOKEN, [output], [tmp_path], hub)


def test_rejected_token_warns_at_each_upload_and_training_finishes(tiny_model, ag_news_dir, tmp_path):
    wrong_token = "hf_" + "WrongTokenForTheUploadEndpoint0000"
    with FakeHub(TOKEN) as hub:
        hub.seed(REPO_ID, EARLIER_MODEL)
        result, output = _train_one_process(tiny_model, ag_news_dir, tmp_path / "out", hub.endpoint, wrong_token,
                                            resume="none")
    assert result.returncode == 0, output[-3000:]
    assert (tmp_path / "out" / "metrics.json").is_file() and (tmp_path / "out" / "model").is_dir()
    assert "Warning: could not upload the checkpoint of step" in output
    assert f"the Hub rejected the token (HTTP 401) while pushing to {REPO_ID}" in output
    assert "Traceback" not in output
    assert not hub.commits_made() and not list((tmp_path / "out" / "checkpoints").glob(".upload-*"))
    assert_token_absent(wrong_token, [output], [tmp_path], hub)


def test_a_checkpoint_that_cannot_be_fetched_stops_the_run_before_training(tiny_model, ag_news_dir, tmp_path):
    """Starting over instead would replace the newest checkpoint on the Hub with a new run's."""
    wrong_token = "hf_" + "WrongTokenForTheDownloadEndpoint00"
    with FakeHub(TOKEN) as hub:
        hub.seed(REPO_ID, EARLIER_MODEL)
        result, output = _train_one_process(tiny_model, ag_news_dir, tmp_path / "out", hub.endpoint, wrong_token)
    assert result.returncode == 2, output[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: could not fetch the newest checkpoint from {REPO_ID}/last-checkpoint: HTTP 401"), result.stderr[-2000:]
    assert "--resume none" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "log.jsonl").exists() and not hub.commits_made()
    assert_token_absent(wrong_token, [output], [tmp_path], hub)


def test_a_pickle_planted_in_the_hub_checkpoint_never_runs(sessions, tiny_model, ag_news_dir):
    """The checkpoint on the Hub is anyone's who can write to the repo. Before, earlier releases' scheduler state
    file, custom_checkpoint_0.pkl, was fully unpickled by accelerate: a command planted in it ran on every rank of
    the new session. Now it is loaded as plain data or not at all, and a file no checkpoint holds is not fetched."""
    root = sessions["root"] / "planted"
    published = root / "published"
    shutil.copytree(sessions["root"] / "published", published)
    marker = root / "code-ran"
    for name in ("custom_checkpoint_0.pkl", "notes.pkl"):
        plant_pickle(published / "last-checkpoint" / name, marker)
    mirror = HubMirror(root / "mirror")
    mirror.commit(REPO_ID, published, "a checkpoint with a planted pickle")
    output_dir = root / "out"
    with mirror:  # one process with the first session's global batch: the signature matches, as an attacker's would
        result, output = _train_one_process(tiny_model, ag_news_dir, output_dir, mirror.endpoint, TOKEN,
                                            run=dict(HUB_RUN, per_device_train_batch_size=16))
    assert result.returncode == 2, output[-3000:]
    (stopped,) = _records(sessions["first_dir"], "stopped")
    installed = output_dir / "checkpoints" / f"step-{stopped['step']:08d}"
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: refusing to resume from {installed}: custom_checkpoint_0.pkl is not plain tensor data (Trying to "
        "load unsupported GLOBAL posix.system"), result.stderr[-2000:]
    assert not marker.exists() and "Traceback" not in output
    assert not (installed / "notes.pkl").exists()  # never downloaded
    assert [r["type"] for r in _records(output_dir, "resume")] == []  # nothing loaded, nothing trained

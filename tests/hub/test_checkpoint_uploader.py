"""The background checkpoint uploader's ordering (plain Python threads, with an upload function that waits to be
released), and the hard-link snapshot that keeps an upload's files when rotation deletes the checkpoint. The real
uploads over HTTP are in test_hub_checkpoints.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from distrinews.core.errors import CheckpointMismatchError, HubPushError, UnsafeCheckpointError
from distrinews.hub.checkpoints import CheckpointUploader
from distrinews.training import checkpoint
from distrinews.training.checkpoint import TrainerState


class SlowHub:
    """An upload function that records what it was given and blocks each upload until released."""

    def __init__(self, fail_steps=()) -> None:
        self.started: list[int] = []
        self.contents: dict[int, bytes] = {}
        self.active = self.most_active = 0
        self.release = threading.Event()
        self.fail_steps = set(fail_steps)
        self._lock = threading.Lock()

    def upload(self, folder: Path, step: int) -> str:
        with self._lock:
            self.started.append(step)
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        self.contents[step] = (folder / "weights").read_bytes()
        self.release.wait(30)
        with self._lock:
            self.active -= 1
        if step in self.fail_steps:
            raise HubPushError(f"the Hub refused the push to test/repo (HTTP 500): step {step}")
        return f"commit-{step}"

    def wait_started(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.started) < count:
            assert time.monotonic() < deadline, f"only {self.started} started"
            time.sleep(0.01)


def _snapshot(tmp_path: Path, step: int) -> Path:
    folder = tmp_path / f".upload-step-{step}"
    folder.mkdir()
    (folder / "weights").write_bytes(f"weights of step {step}".encode())
    return folder


def test_one_upload_in_flight_and_superseded_checkpoints_skipped(tmp_path):
    hub, messages = SlowHub(), []
    uploader = CheckpointUploader(hub.upload, "test/repo/last-checkpoint", log=messages.append)
    snapshots = [_snapshot(tmp_path, step) for step in (4, 8, 12, 16)]
    started = time.monotonic()
    uploader.submit(snapshots[0], 4)
    hub.wait_started(1)
    for snapshot, step in zip(snapshots[1:], (8, 12, 16)):
        uploader.submit(snapshot, step)  # returns at once although an upload is in flight
    assert time.monotonic() - started < 1.0
    assert not snapshots[1].exists() and not snapshots[2].exists()  # superseded while waiting: dropped at once
    hub.release.set()
    assert uploader.close(timeout=10)
    assert hub.started == [4, 16] and hub.most_active == 1
    assert hub.contents == {4: b"weights of step 4", 16: b"weights of step 16"}
    assert (uploader.uploaded, uploader.skipped, uploader.failed) == ([4, 16], [8, 12], [])
    assert not any(snapshot.exists() for snapshot in snapshots)
    assert "Checkpoint upload: step 8 skipped, superseded by step 12" in messages
    assert any(m.startswith("Uploaded the checkpoint of step 16 to test/repo/last-checkpoint") for m in messages)


def test_a_failed_upload_warns_and_the_next_one_goes_on(tmp_path):
    hub, messages = SlowHub(fail_steps={4}), []
    hub.release.set()
    uploader = CheckpointUploader(hub.upload, "test/repo/last-checkpoint", log=messages.append)
    uploader.submit(_snapshot(tmp_path, 4), 4)
    hub.wait_started(1)
    time.sleep(0.1)
    uploader.submit(_snapshot(tmp_path, 8), 8)
    assert uploader.close(timeout=10)
    assert (uploader.uploaded, uploader.failed) == ([8], [4])
    assert ("Warning: could not upload the checkpoint of step 4 to test/repo/last-checkpoint: the Hub refused the "
            "push to test/repo (HTTP 500): step 4") in messages


def test_close_waits_a_bounded_time_for_a_hung_upload(tmp_path):
    hub, messages = SlowHub(), []
    uploader = CheckpointUploader(hub.upload, "test/repo/last-checkpoint", log=messages.append)
    uploader.submit(_snapshot(tmp_path, 4), 4)
    hub.wait_started(1)
    started = time.monotonic()
    assert uploader.close(timeout=0.5) is False
    assert 0.4 < time.monotonic() - started < 3
    assert messages[-1] == ("Warning: the checkpoint upload of step 4 did not finish within 0.5 s; "
                            "test/repo/last-checkpoint keeps the checkpoint uploaded before it")
    hub.release.set()


def test_snapshot_keeps_its_files_when_rotation_deletes_the_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    run_log = tmp_path / "log.jsonl"
    run_log.write_text('{"type": "train", "step": 1}\n')
    snapshots = {}
    for step in (1, 2):
        staging = checkpoint.staging_dir(root, step)
        staging.mkdir(parents=True)
        (staging / "model.safetensors").write_bytes(b"weights %d" % step)
        final = checkpoint.finalize_checkpoint(staging, TrainerState(global_step=step), keep_last=1,
                                               best_weights=tmp_path / "none.safetensors")
        snapshots[step] = checkpoint.snapshot_for_upload(final, run_log)
        run_log.write_text(run_log.read_text() + '{"type": "train", "step": 2}\n')  # the log goes on after it
    assert [p.name for p in checkpoint.complete_checkpoints(root)] == ["step-00000002"]  # step 1 rotated away
    assert (snapshots[1] / "model.safetensors").read_bytes() == b"weights 1"  # yet its upload still has it
    assert (snapshots[1] / checkpoint.STATE_FILE).is_file() and (snapshots[1] / checkpoint.COMPLETE_MARKER).is_file()
    assert (snapshots[1] / "log.jsonl").read_text() == '{"type": "train", "step": 1}\n'  # the log as it was then
    checkpoint.remove_stale_staging(root)  # what the next start does with snapshots a crash left behind
    assert not snapshots[1].exists() and not snapshots[2].exists()
    assert [p.name for p in root.iterdir()] == ["step-00000002"]


def test_downloaded_checkpoint_is_installed_under_its_step_with_its_log(tmp_path):
    root, run_log = tmp_path / "checkpoints", tmp_path / "log.jsonl"
    run_log.write_text('{"type": "train", "step": 99, "from": "another run"}\n')
    downloaded = tmp_path / "download" / "last-checkpoint"
    downloaded.mkdir(parents=True)
    (downloaded / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(CheckpointMismatchError, match="holds no complete checkpoint"):
        checkpoint.install_downloaded_checkpoint(downloaded, root, run_log)  # no COMPLETE marker
    TrainerState(global_step=12).save(downloaded / checkpoint.STATE_FILE)
    (downloaded / checkpoint.COMPLETE_MARKER).write_text("12\n")
    (downloaded / "log.jsonl").write_text('{"type": "train", "step": 12}\n')
    installed = checkpoint.install_downloaded_checkpoint(downloaded, root, run_log)
    assert installed == root / "step-00000012" and checkpoint.latest_checkpoint(root) == installed
    assert run_log.read_text() == '{"type": "train", "step": 12}\n'  # the checkpoint's log replaces any other
    assert not (installed / "log.jsonl").exists() and not downloaded.exists()


@pytest.mark.parametrize("planted, problem", [
    # What the download's pattern random_states_*.pkl also matches: its * spans folders.
    ("random_states_0/evil.pkl", "random_states_0 is a folder"),
    ("optimizer.bin", "optimizer.bin is a symbolic link"),  # a path that leaves the folder
], ids=["subfolder", "symlink"])
def test_a_download_holding_what_no_checkpoint_holds_is_refused_and_not_installed(planted, problem, tmp_path):
    root, run_log = tmp_path / "checkpoints", tmp_path / "log.jsonl"
    downloaded = tmp_path / "download" / "last-checkpoint"
    downloaded.mkdir(parents=True)
    TrainerState(global_step=12).save(downloaded / checkpoint.STATE_FILE)
    (downloaded / checkpoint.COMPLETE_MARKER).write_text("12\n")
    (downloaded / planted).parent.mkdir(exist_ok=True)
    if planted == "optimizer.bin":
        (downloaded / planted).symlink_to(tmp_path / "elsewhere.bin")
    else:
        (downloaded / planted).write_bytes(b"anything")
    with pytest.raises(UnsafeCheckpointError, match=f"^refusing to resume from user/repo/last-checkpoint: {problem}"):
        checkpoint.install_downloaded_checkpoint(downloaded, root, run_log, source="user/repo/last-checkpoint")
    assert checkpoint.latest_checkpoint(root) is None and not run_log.exists()

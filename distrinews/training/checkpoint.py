"""Crash-safe checkpoint folders: written under a temporary name, renamed into place when complete.

A checkpoint is ``checkpoints/step-00000120/`` holding accelerate's state files (model, optimizer,
scaler, every rank's RNG), the LR scheduler's state (JSON), ``trainer_state.json`` (the data position, bookkeeping
and the run signature), the run's ``train_config.json``, a hard link to the best weights so far, and a ``COMPLETE``
marker written last. A checkpoint holding any other file is never resumed from (``check_checkpoint_files``).
Only folders with the marker are ever resumed from, and an older checkpoint is deleted only after a
newer one is complete, so a kill at any moment leaves a usable one. A checkpoint is resumed only by a
run with the same signature (``check_resumable``): anything else would not continue the same run.
This module does file work only; the training loop calls accelerate to fill the staging folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import SAME, TrainConfig
from ..core.formats import AG_NEWS
from ..core.errors import CheckpointMismatchError, CheckpointWriteError, ConfigError, OutputDirError, \
    UnsafeCheckpointError

COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
_PREFIX = "step-"
_STAGING_PREFIX = ".staging-"
_DELETING_PREFIX = ".deleting-"  # renamed away first, so a half-deleted checkpoint never looks complete
_UPLOAD_PREFIX = ".upload-"  # a checkpoint's snapshot while it is uploaded to the Hub (distrinews/hub/checkpoints.py)
RUN_LOG_COPY = "log.jsonl"  # the run's log up to the checkpoint, in an uploaded checkpoint only
BEST_WEIGHTS_LINK = "best_model.safetensors"
CONFIG_FILE = "train_config.json"
SCHEDULER_FILE = "scheduler_state.json"
# Earlier releases kept the scheduler's state in this accelerate custom-object file. Such a checkpoint still
# resumes: training/state_files.py reads the file as plain data (weights_only=True) and converts it to the JSON.
LEGACY_SCHEDULER_FILE = "custom_checkpoint_0.pkl"

# Every file a checkpoint of this program holds: accelerate's save_state (the weights, the optimizer, the grad
# scaler under fp16, each rank's RNG state), the training loop (config, scheduler), finalize_checkpoint (the best
# weights, the trainer state, the marker) and snapshot_for_upload (the log, in a Hub copy). Nothing else is resumed.
CHECKPOINT_FILES = ("model.safetensors", "optimizer.bin", "scaler.pt", CONFIG_FILE, SCHEDULER_FILE, STATE_FILE,
                    BEST_WEIGHTS_LINK, COMPLETE_MARKER, RUN_LOG_COPY, LEGACY_SCHEDULER_FILE)
RANK_RNG_FILE = re.compile(r"random_states_\d+\.pkl")  # accelerate's name for rank N's RNG states
# The same list for a download's allow_patterns (glob: the check after the download insists on the digits).
CHECKPOINT_FILE_PATTERNS = (*CHECKPOINT_FILES, "random_states_*.pkl")


@dataclass
class TrainerState:
    """Where training stands; enough, with accelerate's state, to continue from the exact next batch."""

    global_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0  # micro-batches of `epoch` already trained on
    best_metric: float | None = None  # the best metric_for_best_model so far (None before the first evaluation)
    best_step: int = -1
    evaluations_without_improvement: int = 0  # the early-stopping patience used up so far
    stop_reason: str = ""  # set when early stopping ends training before total_steps
    train_seconds: float = 0.0  # time spent in training steps, summed over every resumed attempt
    run_signature: dict = field(default_factory=dict)  # what a resuming run must match (run_signature())

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainerState":
        values = json.loads(path.read_text())
        if "best_validation_accuracy" in values:  # checkpoints from before metric_for_best_model: accuracy
            best = values.pop("best_validation_accuracy")
            values["best_metric"] = None if best < 0 else best
        return cls(**values)


def data_fingerprint(lengths: Sequence[int], labels: Sequence[int]) -> str:
    """Identify the tokenized training split by content, not by path (the data may move between machines)."""
    crc = zlib.crc32(np.asarray(lengths, dtype=np.int64).tobytes())
    crc = zlib.crc32(np.asarray(labels, dtype=np.int64).tobytes(), crc)
    return f"{len(lengths)} examples, crc32 {crc:08x}"


# What checkpoints written before these settings existed did: kept the best validation weights, and trained on
# the four AG News topics (the one label set there was).
SIGNATURE_VALUES_BEFORE_THEIR_SETTING = {"model_selection": "best_validation", "labels": list(AG_NEWS.label_names)}


def run_signature(config: TrainConfig, num_processes: int, train_data: str, total_steps: int,
                  labels: Sequence[str]) -> dict:
    """The settings a resumed run must share with the checkpoint to continue the same training.

    Every config field marked ``resume=SAME`` (distrinews/training/config.py), by value; fields that only shape
    the training data through its content (``train_data``: lengths and labels of the tokenized split) and the
    label names; and two derived values. The data position is a global batch index, so the global micro-batch
    (per-device batch x processes) must match, while the number of processes alone may change; the scheduler
    carries the total step count.
    """
    signature = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata["resume"] == SAME}
    return {**signature, "train_data": train_data, "labels": list(labels),
            "examples_per_micro_batch": config.per_device_train_batch_size * num_processes,
            "total_steps": total_steps}


def _value_before_setting_existed(key: str):
    """A checkpoint that lacks a key predates that setting, so it ran with the setting's default."""
    if key in SIGNATURE_VALUES_BEFORE_THEIR_SETTING:
        return SIGNATURE_VALUES_BEFORE_THEIR_SETTING[key]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return defaults.get(key, "(not recorded)")


def check_resumable(checkpoint: Path, saved: dict, current: dict) -> None:
    """Raise CheckpointMismatchError naming every setting that differs from the checkpoint's run."""
    saved = {**{key: _value_before_setting_existed(key) for key in current}, **saved}
    differences = [f"{key}: checkpoint {saved.get(key, '(not recorded)')!r}, this run {value!r}"
                   for key, value in current.items() if saved.get(key) != value]
    if differences:
        raise CheckpointMismatchError(
            f"cannot resume from {checkpoint}: it belongs to a run with other settings ("
            + "; ".join(differences) + "). Resuming would not continue that run. Use the original settings, "
            "or start over with --resume none (this deletes the old checkpoints) or another --output_dir.")


def check_output_dir(output_dir: Path, process_index: int, keep_last: int, weight_bytes: int) -> None:
    """Fail before training if output_dir is not writable or surely too small for this run's checkpoints.

    Every rank calls it (each writes its own RNG state into checkpoints), so all fail at once.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write_probe-{process_index}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"output_dir {output_dir} is not writable: {err.strerror or err}") from err
    # A lower bound, so it never refuses a run that fits: a checkpoint holds the weights and AdamW's two
    # moments, up to keep_last + 1 exist while a new one is written, and model/ plus the best weights
    # hold the weights twice more.
    missing_checkpoints = max(0, keep_last + 1 - len(complete_checkpoints(output_dir / "checkpoints")))
    needed = missing_checkpoints * 3 * weight_bytes + 2 * weight_bytes
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise OutputDirError(f"output_dir {output_dir} has {free / 1e6:.1f} MB free, but this run needs at least "
                             f"{needed / 1e6:.1f} MB ({keep_last + 1} checkpoints of {3 * weight_bytes / 1e6:.1f} MB "
                             f"with keep_last={keep_last}, plus the exported model). Free some space, lower "
                             "keep_last or choose another output_dir.")


@contextmanager
def write_errors_reported(what: str, checkpoint_root: Path):
    """Turn any failure while writing run files (``what``: a checkpoint, the best weights, the final model) into a
    CheckpointWriteError that names the newest intact checkpoint in ``checkpoint_root``.

    Wrap file writes only, never a collective: a full disk surfaces as OSError, RuntimeError
    (torch.save) or SafetensorError, so every error is translated, keeping its own text.
    """
    try:
        yield
    except Exception as err:
        raise write_failed(what, checkpoint_root, f"{type(err).__name__}: {err}") from err


def write_failed(what: str, checkpoint_root: Path, cause: str) -> CheckpointWriteError:
    """The error for run files that could not be written: what failed, and which checkpoint to resume from."""
    newest = latest_checkpoint(checkpoint_root)
    return CheckpointWriteError(
        f"could not write {what}: {cause}. The newest complete checkpoint ({newest or 'none yet'}) is intact; "
        "free some space and run the same command again to resume from it.")


def resume_checkpoint(resume: str, root: Path) -> Path | None:
    """The checkpoint a run with ``resume`` (auto, none or a checkpoint folder) continues from, if any."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(root)
    path = Path(resume)
    if not (path / COMPLETE_MARKER).is_file():
        raise ConfigError(f"resume={resume!r} is not a complete checkpoint (no {COMPLETE_MARKER} marker): pass a "
                          "checkpoints/step-* folder, 'auto' or 'none'")
    return path


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def staging_dir(root: Path, step: int) -> Path:
    """The folder every rank writes a checkpoint into before it is complete."""
    return root / f"{_STAGING_PREFIX}{checkpoint_name(step)}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def remove_stale_staging(root: Path) -> None:
    """Drop half-written and half-deleted checkpoints left by a crash (main process, before training)."""
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith((_STAGING_PREFIX, _DELETING_PREFIX, _UPLOAD_PREFIX)):
                shutil.rmtree(path, ignore_errors=True)


def remove_checkpoints(root: Path) -> list[Path]:
    """Delete every checkpoint under root (a deliberate fresh start); return what was removed."""
    found = complete_checkpoints(root)
    for path in found:
        _delete_checkpoint(path)
    return found


def _delete_checkpoint(path: Path) -> None:
    # Rename first: rmtree is not atomic, and a kill halfway must not leave a folder that still has
    # its COMPLETE marker but misses its weights.
    doomed = path.with_name(_DELETING_PREFIX + path.name)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def finalize_checkpoint(staging: Path, state: TrainerState, keep_last: int, best_weights: Path) -> Path:
    """Mark the staged checkpoint complete, move it into place, then prune old ones (main process).

    ``best_weights`` (if it exists yet) is hard-linked in, so resuming restores the best weights of
    *this* checkpoint's past, not a later best from an attempt that died after the checkpoint.
    """
    final = staging.parent / checkpoint_name(state.global_step)
    if (final / COMPLETE_MARKER).is_file():
        # Already complete for this step (resumed at the very end): keep the one on disk.
        shutil.rmtree(staging)
        return final
    if best_weights.is_file():
        _link_or_copy(best_weights, staging / BEST_WEIGHTS_LINK)
    state.save(staging / STATE_FILE)
    _fsync_tree(staging)
    (staging / COMPLETE_MARKER).write_text(f"{state.global_step}\n")
    _fsync_tree(staging)
    shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover under the final name
    os.replace(staging, final)
    _fsync_dir(final.parent)
    for old in complete_checkpoints(final.parent)[:-keep_last]:
        _delete_checkpoint(old)
    return final


def snapshot_for_upload(checkpoint: Path, run_log: Path) -> Path:
    """A private view of a complete checkpoint for a background upload, plus the run's log so far (main process).

    Hard links (a copy where the filesystem cannot link): a snapshot costs no space, and rotating the checkpoint
    away (``keep_last``) during the upload removes only its names, never the data the upload is reading, since
    checkpoint files are written once and never changed in place (that data then stays on disk until the upload
    ends). Protecting the checkpoint folder from rotation instead would tie the pruning to the upload thread.
    The log is copied, not linked: it is appended to in place. The uploader deletes the snapshot when done; one
    left by a crash goes with ``remove_stale_staging``.
    """
    snapshot = checkpoint.with_name(f"{_UPLOAD_PREFIX}{checkpoint.name}")
    shutil.rmtree(snapshot, ignore_errors=True)  # a leftover of an earlier attempt at the same step
    shutil.copytree(checkpoint, snapshot, copy_function=_link_or_copy)
    if run_log.is_file():
        shutil.copy2(run_log, snapshot / RUN_LOG_COPY)
    return snapshot


def check_checkpoint_files(folder: Path, source: Path | str | None = None) -> list[Path]:
    """The files of checkpoint ``folder`` (sorted by name), if each is a plain file under a name this program writes.

    Raises UnsafeCheckpointError naming the first that is not (a link, a folder, another name), before anything is
    read: resuming loads the state files, and a file nobody expects is what a planted one looks like. ``source``
    names the checkpoint in the message (default: the folder).
    """
    files = sorted(folder.iterdir())
    for path in files:
        if path.is_symlink():
            problem = "is a symbolic link"
        elif path.is_dir():
            problem = "is a folder"
        elif not path.is_file():
            problem = "is not a regular file"
        elif path.name not in CHECKPOINT_FILES and not RANK_RNG_FILE.fullmatch(path.name):
            problem = "is not a file this program writes into a checkpoint"
        else:
            continue
        raise unsafe_checkpoint(source or folder, f"{path.name} {problem}")
    return files


def unsafe_checkpoint(source: Path | str, problem: str) -> UnsafeCheckpointError:
    """The error that refuses to resume from ``source`` because of ``problem`` (which names the file)."""
    return UnsafeCheckpointError(
        f"refusing to resume from {source}: {problem}; nothing was loaded. A checkpoint holds only the files this "
        "program writes, and their state as plain data. Delete that checkpoint, or start over with --resume none.")


def install_downloaded_checkpoint(folder: Path, root: Path, run_log: Path, source: str | None = None) -> Path:
    """Move a checkpoint fetched from the Hub (``source``, for messages) into ``root`` under its step's name; its
    log becomes the run's log.

    Refuses a folder without the ``COMPLETE`` marker or the trainer state: an upload never commits one (each
    checkpoint is one commit), so it is not a checkpoint of this program; and one holding anything else than the
    files of a checkpoint (``check_checkpoint_files``).
    """
    check_checkpoint_files(folder, source)
    if not (folder / COMPLETE_MARKER).is_file() or not (folder / STATE_FILE).is_file():
        raise CheckpointMismatchError(f"{folder} holds no complete checkpoint (no {COMPLETE_MARKER} marker or "
                                      f"{STATE_FILE}); start over with --resume none")
    step = TrainerState.load(folder / STATE_FILE).global_step
    log_copy = folder / RUN_LOG_COPY
    if log_copy.is_file():
        os.replace(log_copy, run_log)  # the interrupted run's timeline; resuming rewinds it to the checkpoint
    else:
        run_log.unlink(missing_ok=True)  # a log of some other run must not be continued
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    os.replace(folder, final)
    _fsync_dir(root)
    return final


def restore_best_weights(checkpoint: Path, best_weights: Path) -> None:
    """Make ``best_weights`` the checkpoint's best weights, or remove it if there were none yet (main process)."""
    saved = checkpoint / BEST_WEIGHTS_LINK
    if saved.is_file():
        # Its own temporary name: the training loop writes new best weights through ".NAME.tmp", and
        # writing through a leftover hard link would overwrite the checkpoint's copy in place.
        staging = best_weights.with_name(f".{best_weights.name}.restore")
        staging.unlink(missing_ok=True)
        _link_or_copy(saved, staging)
        staging.replace(best_weights)
    else:
        best_weights.unlink(missing_ok=True)


def _link_or_copy(source: Path, destination: Path) -> None:
    # A hard link costs no space; the best-weights file is always replaced by rename, never rewritten
    # in place, so the link keeps the old content. Some filesystems cannot link: copy there.
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

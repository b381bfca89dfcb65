"""Resuming in one process (in-process, no launcher): epoch boundaries, NaN losses, checkpoints of other runs,
checkpoints holding files that must not be loaded, an earlier release's checkpoint, output folders that cannot take
the run. The 2-process kill/SIGTERM tests are in test_fault_injection.py."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_published_weights_are, assert_same_weights, tiny_train_args
from planted_pickle import plant_pickle
from distrinews.core.errors import UnsafeCheckpointError
from distrinews.training import checkpoint, faults, state_files
from distrinews.training.loop import main as train_main

STEPS_PER_EPOCH = 13  # 216 training examples // 16 per step
# best_validation: resuming must also restore the best-weights file
RUN = dict(model_selection="best_validation", per_device_train_batch_size=16, logging_steps=1, checkpoint_every=4,
           keep_last=20)


def _train(tiny_model, ag_news_dir, output_dir, **overrides) -> int:
    return train_main(tiny_train_args(tiny_model, ag_news_dir, output_dir, **{**RUN, **overrides}))


def _records(output_dir, kind):
    lines = (output_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


@pytest.fixture(scope="module")
def reference(tiny_model, ag_news_dir, tmp_path_factory):
    """One uninterrupted single-process run, every checkpoint kept."""
    output_dir = tmp_path_factory.mktemp("reference") / "out"
    assert _train(tiny_model, ag_news_dir, output_dir) == 0
    return output_dir


def _copy_checkpoint(reference, step, output_dir, with_log=True):
    name = f"step-{step:08d}"
    shutil.copytree(reference / "checkpoints" / name, output_dir / "checkpoints" / name)
    if with_log:  # the interrupted run's log, which went on past the checkpoint
        shutil.copy(reference / "log.jsonl", output_dir / "log.jsonl")


@pytest.mark.parametrize("step", [STEPS_PER_EPOCH - 1, STEPS_PER_EPOCH], ids=["across_epoch_boundary", "last_step_of_epoch"])
def test_resume_matches_uninterrupted_run(step, reference, tiny_model, ag_news_dir, tmp_path):
    output_dir = tmp_path / "out"
    _copy_checkpoint(reference, step, output_dir)
    assert _train(tiny_model, ag_news_dir, output_dir) == 0

    (resume,) = _records(output_dir, "resume")
    assert resume["step"] == step and resume["dropped_records"] > 0
    # The log is one timeline again: every step once, and every loss bitwise the reference's, so no
    # batch was repeated or skipped (the loss at a step is computed on that step's batch).
    assert [(r["step"], r["epoch"], r["loss"]) for r in _records(output_dir, "train")] == \
        [(r["step"], r["epoch"], r["loss"]) for r in _records(reference, "train")]
    for name in ("model/model.safetensors", "best_model.safetensors", "checkpoints/step-00000026/model.safetensors"):
        assert_same_weights(reference / name, output_dir / name)
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (output_dir, reference))
    assert (ours["validation"], ours["test"], ours["selected_step"]) == \
        (theirs["validation"], theirs["test"], theirs["selected_step"])


def test_best_validation_publishes_the_best_weights(reference):
    assert_published_weights_are(reference / "best_model.safetensors", reference)


def test_nan_loss_stops_with_message_and_keeps_the_last_good_checkpoint(reference, tiny_model, ag_news_dir, tmp_path,
                                                                         monkeypatch, capsys):
    output_dir = tmp_path / "out"
    monkeypatch.setenv(faults.ENV_VAR, "nan_loss@6")
    code = _train(tiny_model, ag_news_dir, output_dir, checkpoint_every=2, keep_last=2, max_nonfinite_steps=3)
    message = capsys.readouterr().err
    assert code == 3
    assert "non-finite loss or gradients for 3 optimizer steps in a row (up to step 8)" in message
    assert f"last good checkpoint is {output_dir / 'checkpoints' / 'step-00000006'}" in message
    assert [r["step"] for r in _records(output_dir, "nonfinite")] == [6, 7, 8]
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    assert not (output_dir / "metrics.json").exists()
    # Step 4 is bitwise the uninterrupted run's; step 6 holds step 5's weights, since no NaN update was applied.
    assert_same_weights(reference / "checkpoints/step-00000004/model.safetensors",
                        output_dir / "checkpoints/step-00000004/model.safetensors")
    weights = load_file(output_dir / "checkpoints/step-00000006/model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())

    # A transient cause: the same command without the fault resumes from the good checkpoint and finishes.
    monkeypatch.delenv(faults.ENV_VAR)
    assert _train(tiny_model, ag_news_dir, output_dir, checkpoint_every=2, keep_last=2, max_nonfinite_steps=3) == 0
    assert [r["step"] for r in _records(output_dir, "resume")] == [6]
    assert json.loads((output_dir / "metrics.json").read_text())["global_step"] == 26


def test_checkpoint_of_another_run_is_refused(reference, tiny_model, ag_news_dir, tmp_path, capsys):
    output_dir = tmp_path / "out"
    _copy_checkpoint(reference, 4, output_dir, with_log=False)
    assert _train(tiny_model, ag_news_dir, output_dir, seed=8, per_device_train_batch_size=8) == 2
    message = capsys.readouterr().err
    assert f"cannot resume from {output_dir / 'checkpoints' / 'step-00000004'}" in message
    assert "seed: checkpoint 7, this run 8" in message
    assert "examples_per_micro_batch: checkpoint 16, this run 8" in message
    assert "train_data: checkpoint" in message  # another seed carves out another validation split
    assert [p.name for p in (output_dir / "checkpoints").iterdir()] == ["step-00000004"]
    # Starting over is explicit, and it clears the old checkpoints so they are never resumed or kept instead.
    assert _train(tiny_model, ag_news_dir, output_dir, seed=8, resume="none", max_steps=2) == 0
    assert [p.name for p in (output_dir / "checkpoints").iterdir()] == ["step-00000002"]


def test_output_dir_that_cannot_be_written_fails_before_training(tiny_model, ag_news_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert _train(tiny_model, ag_news_dir, blocker / "out") == 2
    assert f"output_dir {blocker / 'out'} is not writable" in capsys.readouterr().err


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 512 KiB filesystem; needs permission to mount (root in the CI container)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_too_little_free_space_fails_before_training(small_filesystem, tiny_model, ag_news_dir, capsys):
    output_dir = small_filesystem / "out"
    assert _train(tiny_model, ag_news_dir, output_dir, keep_last=2) == 2
    message = capsys.readouterr().err
    assert f"output_dir {output_dir} has 0.5 MB free, but this run needs at least" in message
    assert "3 checkpoints of 0.3 MB with keep_last=2" in message
    assert not (output_dir / "log.jsonl").exists() and not (output_dir / "checkpoints").exists()


def test_weights_size_estimate_matches_a_real_checkpoint(reference):
    """The free-space check assumes a checkpoint is 3x the weights (weights + AdamW moments): keep it honest."""
    folder = reference / "checkpoints" / "step-00000004"
    weights = (folder / "model.safetensors").stat().st_size
    state = weights + (folder / "optimizer.bin").stat().st_size
    assert math.isclose(state / weights, 3, rel_tol=0.15)


# ---- what a resumed checkpoint may hold: only the files this program writes, all of them plain data

def _link_elsewhere(path, marker):
    outside = path.parent.parent / f"outside-{path.name}"
    shutil.move(path, outside)
    path.symlink_to(outside)


BAD_FOLDERS = {  # id: (the file, how it is changed given its path and the marker, what the refusal says of it)
    "unexpected_pickle": ("extra.pkl", plant_pickle, "is not a file this program writes"),
    "subfolder": ("random_states_0.pkl.d", lambda path, marker: path.mkdir(), "is a folder"),
    "symlink": ("optimizer.bin", _link_elsewhere, "is a symbolic link"),
    "optimizer_that_runs_code": ("optimizer.bin", plant_pickle,
                                 "is not plain tensor data (Trying to load unsupported GLOBAL posix.system"),
    "rng_that_runs_code": ("random_states_0.pkl", plant_pickle, "is not plain tensor data"),
    "another_ranks_rng_that_runs_code": ("random_states_5.pkl", plant_pickle, "is not plain tensor data"),
    # Plain data, but no RNG states: accelerate would skip it silently and resume with other random numbers.
    "rng_without_states": ("random_states_0.pkl", lambda path, marker: torch.save({"step": 4}, path),
                           "does not hold the random number generators' states (KeyError: 'random_state')"),
    "scheduler_json_of_something_else": (checkpoint.SCHEDULER_FILE, lambda path, marker: path.write_text("[1, 2]"),
                                         "does not hold an LR scheduler's state"),
    "legacy_scheduler_that_runs_code": (checkpoint.LEGACY_SCHEDULER_FILE, plant_pickle, "is not plain tensor data"),
}


@pytest.mark.parametrize("change", BAD_FOLDERS, ids=list(BAD_FOLDERS))
def test_a_checkpoint_with_a_file_that_is_not_safe_to_load_is_refused(change, reference, tmp_path):
    folder = tmp_path / "checkpoints" / "step-00000004"
    shutil.copytree(reference / "checkpoints" / folder.name, folder)
    assert state_files.checked_scheduler_state(folder)["last_epoch"] == 4  # as written, it passes
    marker = tmp_path / "code-ran"
    name, alter, problem = BAD_FOLDERS[change]
    alter(folder / name, marker)
    with pytest.raises(UnsafeCheckpointError) as refusal:
        state_files.checked_scheduler_state(folder)
    assert str(refusal.value).startswith(f"refusing to resume from {folder}: {name} {problem}")
    assert "nothing was loaded" in str(refusal.value) and "--resume none" in str(refusal.value)
    assert "\n" not in str(refusal.value) and not marker.exists()


def test_a_planted_rng_pickle_stops_the_run_before_anything_is_loaded(reference, tiny_model, ag_news_dir, tmp_path,
                                                                     capsys):
    """Before, accelerate refused it with weights_only=True, then skipped the RNG states silently: the run resumed
    with other random numbers, exit code 0."""
    output_dir, marker = tmp_path / "out", tmp_path / "code-ran"
    _copy_checkpoint(reference, 24, output_dir)
    log_before = (output_dir / "log.jsonl").read_text()
    plant_pickle(output_dir / "checkpoints" / "step-00000024" / "random_states_0.pkl", marker)
    assert _train(tiny_model, ag_news_dir, output_dir) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: refusing to resume from {output_dir / 'checkpoints' / 'step-00000024'}: "
                            "random_states_0.pkl is not plain tensor data"), error
    assert not marker.exists() and (output_dir / "log.jsonl").read_text() == log_before  # not even rewound


def test_a_checkpoint_of_the_previous_release_resumes_exactly_and_is_converted(reference, tiny_model, ag_news_dir,
                                                                               tmp_path):
    """Releases before the scheduler's JSON kept its state in custom_checkpoint_0.pkl, written by accelerate's
    save_custom_state; it is read as plain data and replaced by the JSON."""
    from accelerate.checkpointing import save_custom_state
    from transformers import get_scheduler

    output_dir = tmp_path / "out"
    _copy_checkpoint(reference, 24, output_dir)
    folder = output_dir / "checkpoints" / "step-00000024"
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(2)]  # the run's two rate groups
    scheduler = get_scheduler("linear", torch.optim.SGD(groups, lr=5e-3), num_warmup_steps=0, num_training_steps=26)
    scheduler.load_state_dict(json.loads((folder / checkpoint.SCHEDULER_FILE).read_text()))
    save_custom_state(scheduler, str(folder))
    (folder / checkpoint.SCHEDULER_FILE).unlink()
    assert sorted(p.name for p in folder.glob("*.pkl")) == [checkpoint.LEGACY_SCHEDULER_FILE, "random_states_0.pkl"]

    assert _train(tiny_model, ag_news_dir, output_dir) == 0
    assert [r["step"] for r in _records(output_dir, "resume")] == [24]
    # The learning rate of steps 25 and 26 comes from the converted scheduler state.
    assert [(r["step"], r["lr"], r["loss"]) for r in _records(output_dir, "train")] == \
        [(r["step"], r["lr"], r["loss"]) for r in _records(reference, "train")]
    for name in ("model/model.safetensors", "best_model.safetensors", "checkpoints/step-00000026/model.safetensors"):
        assert_same_weights(reference / name, output_dir / name)
    assert not (folder / checkpoint.LEGACY_SCHEDULER_FILE).exists()
    assert json.loads((folder / checkpoint.SCHEDULER_FILE).read_text())["last_epoch"] == 24

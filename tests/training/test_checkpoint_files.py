"""Checkpoint file logic, the log rewind on resume, the resume signature and the resumable sampler, without training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from distrinews.core.formats import AG_NEWS
from distrinews.training import checkpoint, faults
from distrinews.training.checkpoint import CheckpointMismatchError, TrainerState
from distrinews.training.config import TrainConfig
from distrinews.training.reporting import RunLog
from distrinews.training.sampling import ResumableBatchSampler


def _stage(root, step, files=("model.safetensors", "optimizer.bin")):
    staging = checkpoint.staging_dir(root, step)
    staging.mkdir(parents=True)
    for name in files:
        (staging / name).write_text(f"{name} at {step}")
    return staging


def test_only_marked_checkpoints_count_and_pruning_keeps_the_newest(tmp_path):
    root, best = tmp_path / "checkpoints", tmp_path / "best_model.safetensors"
    for step in (4, 8, 12):
        checkpoint.finalize_checkpoint(_stage(root, step), TrainerState(global_step=step), keep_last=2, best_weights=best)
    _stage(root, 16)  # a crash mid-write: no marker
    assert [p.name for p in checkpoint.complete_checkpoints(root)] == ["step-00000008", "step-00000012"]
    assert checkpoint.latest_checkpoint(root).name == "step-00000012"
    checkpoint.remove_stale_staging(root)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000008", "step-00000012"]
    saved = TrainerState.load(root / "step-00000012" / checkpoint.STATE_FILE)
    assert saved.global_step == 12


def test_half_deleted_checkpoint_never_looks_complete(tmp_path):
    root = tmp_path / "checkpoints"
    checkpoint.finalize_checkpoint(_stage(root, 4), TrainerState(global_step=4), keep_last=1,
                                   best_weights=tmp_path / "none")
    # What a kill in the middle of pruning leaves: the folder was renamed away before rmtree started.
    (root / "step-00000004").rename(root / ".deleting-step-00000004")
    assert checkpoint.latest_checkpoint(root) is None
    checkpoint.remove_stale_staging(root)
    assert not list(root.iterdir())


def test_best_weights_are_linked_into_the_checkpoint_and_restored_from_it(tmp_path):
    root, best = tmp_path / "checkpoints", tmp_path / "best_model.safetensors"
    best.write_text("best at step 4")
    checkpoint.finalize_checkpoint(_stage(root, 4), TrainerState(global_step=4), keep_last=3, best_weights=best)
    # A later attempt found a better model, then died before its next checkpoint.
    staging = tmp_path / ".best_model.safetensors.tmp"
    staging.write_text("best at step 6, never checkpointed")
    staging.replace(best)
    assert (root / "step-00000004" / "best_model.safetensors").read_text() == "best at step 4"  # the link kept it
    checkpoint.restore_best_weights(root / "step-00000004", best)
    assert best.read_text() == "best at step 4"
    # A checkpoint from before any evaluation carries no best weights: a leftover must go.
    checkpoint.finalize_checkpoint(_stage(root, 1), TrainerState(global_step=1), keep_last=3,
                                   best_weights=tmp_path / "missing")
    checkpoint.restore_best_weights(root / "step-00000001", best)
    assert not best.exists()

AG_NEWS_LABELS = AG_NEWS.label_names


def test_signature_mismatch_names_every_difference(tmp_path):
    config = TrainConfig(seed=7, per_device_train_batch_size=8)
    saved = checkpoint.run_signature(config, num_processes=2, train_data="216 examples, crc32 0001", total_steps=26,
                                     labels=AG_NEWS_LABELS)
    # Same global micro-batch on another number of processes: the data position still means the same.
    same_global = TrainConfig(seed=7, per_device_train_batch_size=16)
    checkpoint.check_resumable(tmp_path, saved, checkpoint.run_signature(same_global, 1, "216 examples, crc32 0001", 26,
                                                                         AG_NEWS_LABELS))
    other = TrainConfig(seed=8, per_device_train_batch_size=4, learning_rate=1e-4)
    with pytest.raises(CheckpointMismatchError) as error:
        checkpoint.check_resumable(tmp_path, saved, checkpoint.run_signature(other, 2, "216 examples, crc32 0002",
                                                                             26, AG_NEWS_LABELS))
    message = str(error.value)
    for expected in ("seed: checkpoint 7, this run 8", "examples_per_micro_batch: checkpoint 16, this run 8",
                     "learning_rate: checkpoint 5e-05, this run 0.0001", "train_data: checkpoint '216 examples, crc32 "
                     "0001', this run '216 examples, crc32 0002'", "--resume none"):
        assert expected in message


def test_data_fingerprint_sees_content_not_paths():
    lengths, labels = [5, 9, 7], [0, 3, 1]
    assert checkpoint.data_fingerprint(lengths, labels) == checkpoint.data_fingerprint(list(lengths), list(labels))
    assert checkpoint.data_fingerprint(lengths, labels) != checkpoint.data_fingerprint(lengths, [0, 3, 2])
    assert checkpoint.data_fingerprint(lengths, labels).startswith("3 examples")


def test_log_rewind_keeps_one_timeline(tmp_path):
    log = RunLog(tmp_path / "log.jsonl", enabled=True)
    for step in range(1, 8):
        log.write("train", step=step, loss=1.0 / step)
    log.write("eval", split="test", step=3, final=True)
    with log.path.open("a") as handle:
        handle.write('{"type": "train", "step": 8, "lo')  # killed in the middle of a line
    log.rewind(4, checkpoint="checkpoints/step-00000004")
    records = log.records()
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]
    assert not any(r.get("final") for r in records)
    assert records[-1]["type"] == "resume" and records[-1]["step"] == 4 and records[-1]["dropped_records"] == 5
    RunLog(tmp_path / "other.jsonl", enabled=False).rewind(4)  # non-main ranks: no-op
    assert not (tmp_path / "other.jsonl").exists()


def test_fault_spec_is_checked():
    assert faults.requested_faults() == {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(faults.ENV_VAR, "nan_loss@6, crash_during_checkpoint@8")
        assert faults.requested_faults() == {"nan_loss": 6, "crash_during_checkpoint": 8}
        patch.setenv(faults.ENV_VAR, "nan_loss")
        with pytest.raises(ValueError, match="is not FAULT@STEP"):
            faults.requested_faults()


@pytest.mark.parametrize("replicas", [1, 2, 4])
def test_resuming_the_sampler_at_any_batch_repeats_and_skips_nothing(replicas):
    lengths = np.random.default_rng(0).integers(5, 60, size=203)
    samplers = [ResumableBatchSampler(lengths, 24 // replicas, num_replicas=replicas, rank=r, seed=3)
                for r in range(replicas)]
    for epoch in (0, 1):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        full = [sum(parts, []) for parts in zip(*(list(s) for s in samplers))]
        seen = sum(full, [])
        assert len(seen) == len(set(seen)) == len(samplers[0]) * 24  # every example at most once per epoch
        for start in range(len(full) + 1):
            for sampler in samplers:
                sampler.set_epoch(epoch, start_batch=start)
            resumed = [sum(parts, []) for parts in zip(*(list(s) for s in samplers))]
            assert resumed == full[start:]


def test_state_round_trips_with_its_signature(tmp_path):
    state = TrainerState(global_step=5, epoch=1, batches_done_in_epoch=2, run_signature={"seed": 7})
    state.save(tmp_path / "s.json")
    assert TrainerState.load(tmp_path / "s.json") == state
    assert json.loads((tmp_path / "s.json").read_text())["run_signature"] == {"seed": 7}


def test_per_parameter_rates_are_part_of_the_signature_and_old_checkpoints_still_resume(tmp_path):
    config = TrainConfig(seed=7)
    current = checkpoint.run_signature(config, 2, "216 examples, crc32 0001", 26, AG_NEWS_LABELS)
    older = {key: value for key, value in current.items() if key not in ("head_learning_rate", "layer_lr_decay")}
    checkpoint.check_resumable(tmp_path, older, current)  # written before these settings existed: the defaults
    changed = checkpoint.run_signature(TrainConfig(seed=7, head_learning_rate=1e-3, layer_lr_decay=0.9), 2,
                                       "216 examples, crc32 0001", 26, AG_NEWS_LABELS)
    with pytest.raises(CheckpointMismatchError) as error:
        checkpoint.check_resumable(tmp_path, older, changed)
    assert "head_learning_rate: checkpoint 0.0, this run 0.001" in str(error.value)
    assert "layer_lr_decay: checkpoint 1.0, this run 0.9" in str(error.value)


def test_checkpoints_from_before_model_selection_resume_as_the_best_validation_runs_they_were(tmp_path):
    signature = {name: checkpoint.run_signature(TrainConfig(seed=7, model_selection=name), 2, "216 examples", 26,
                                                AG_NEWS_LABELS)
                 for name in ("last", "best_validation")}
    older = {key: value for key, value in signature["last"].items() if key != "model_selection"}
    checkpoint.check_resumable(tmp_path, older, signature["best_validation"])
    with pytest.raises(CheckpointMismatchError) as error:
        checkpoint.check_resumable(tmp_path, older, signature["last"])
    assert "model_selection: checkpoint 'best_validation', this run 'last'" in str(error.value)


def test_checkpoints_from_before_labels_came_from_the_data_resume_as_the_ag_news_runs_they_were(tmp_path):
    current = checkpoint.run_signature(TrainConfig(seed=7), 2, "216 examples", 26, AG_NEWS_LABELS)
    older = {key: value for key, value in current.items() if key not in ("labels", "problem_type", "class_weights")}
    checkpoint.check_resumable(tmp_path, older, current)
    other = checkpoint.run_signature(TrainConfig(seed=7), 2, "216 examples", 26, ("ham", "spam"))
    with pytest.raises(CheckpointMismatchError, match=r"labels: checkpoint \['World', 'Sports', 'Business', "
                                                      r"'Sci/Tech'\], this run \['ham', 'spam'\]"):
        checkpoint.check_resumable(tmp_path, older, other)


@pytest.mark.parametrize("change", [dict(class_weights="balanced"), dict(problem_type="multi_label_classification"),
                                    dict(max_grad_norm=0.5), dict(metric_for_best_model="loss")])
def test_a_setting_that_changes_the_steps_is_part_of_the_signature(change, tmp_path):
    """Every field marked resume=SAME is compared; a new one cannot be forgotten in a hand-kept list."""
    from distrinews.training.config import SAME

    saved = checkpoint.run_signature(TrainConfig(seed=7), 2, "216 examples", 26, AG_NEWS_LABELS)
    (name,) = change
    assert {f.name: f.metadata["resume"] for f in dataclasses.fields(TrainConfig)}[name] == SAME
    with pytest.raises(CheckpointMismatchError, match=f"{name}: checkpoint"):
        checkpoint.check_resumable(tmp_path, saved, checkpoint.run_signature(TrainConfig(seed=7, **change), 2,
                                                                             "216 examples", 26, AG_NEWS_LABELS))

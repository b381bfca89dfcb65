"""The precision a training process computes in: the machine's fastest by default, accelerate's setting when
accelerate launched it, ``--mixed_precision`` otherwise; and bf16 training resumes exactly and keeps DDP
equivalent to one process, as fp32 does (test_resume.py, test_ddp_equivalence.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import accelerate_launch, assert_same_weights, tiny_train_args
from distrinews.core.errors import ConfigError
from distrinews.core.machine import fastest_precision
from distrinews.training.loop import main as train_main
from distrinews.training.precision import ACCELERATE_VARIABLE, training_precision

# Single process, batch 16: 13 steps an epoch, a checkpoint every 4, a loss at every step.
RUN = dict(per_device_train_batch_size=16, logging_steps=1, checkpoint_every=4, keep_last=20)
# bf16 rounds each process's share of a weight gradient before DDP averages them, where one process rounds the
# whole: the two curves agree to bf16's precision (about 1% apart at most here), not to fp32's 1e-4.
BF16_LOSS_TOLERANCE = 0.04


def _losses(output_dir):
    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["type"] == "train"]


def _metrics(output_dir):
    return json.loads((output_dir / "metrics.json").read_text())


@pytest.fixture
def unpinned(monkeypatch):
    """No precision in the environment, as in a shell that did not export one (conftest.py pins fp32), and a fresh
    accelerate state before and after: accelerate keeps one per process, and refuses a second precision in it
    (this file shares its xdist worker with other in-process runs, in fp32)."""
    from accelerate.state import AcceleratorState

    monkeypatch.delenv(ACCELERATE_VARIABLE, raising=False)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_the_precision_comes_from_accelerate_then_the_flag_then_the_machine(unpinned, monkeypatch):
    assert training_precision() == fastest_precision([])
    assert training_precision("no").mixed_precision == "no"
    monkeypatch.setenv(ACCELERATE_VARIABLE, "bf16")
    assert training_precision().mixed_precision == "bf16"
    assert training_precision("bf16").mixed_precision == "bf16"  # said twice, the same: fine
    with pytest.raises(ConfigError, match=r"set twice: ACCELERATE_MIXED_PRECISION=bf16 .* --mixed_precision no"):
        training_precision("no")
    with pytest.raises(ConfigError, match="--mixed_precision must be one of auto, no, bf16, fp16, got 'fp8'"):
        training_precision("fp8")
    monkeypatch.setenv(ACCELERATE_VARIABLE, "fp8")  # accelerate has more precisions than the flag offers
    assert training_precision().words == "fp8"


def test_one_process_trains_in_this_machines_fastest_precision_by_default(unpinned, tiny_model, ag_news_dir, tmp_path,
                                                                         capsys):
    assert train_main(tiny_train_args(tiny_model, ag_news_dir, tmp_path / "out", max_steps=2)) == 0
    expected = fastest_precision([])
    assert _metrics(tmp_path / "out")["train"]["mixed_precision"] == expected.mixed_precision
    assert f"precision: {expected.words} ({expected.why})" in capsys.readouterr().out


def test_bf16_resumes_exactly(unpinned, tiny_model, ag_news_dir, tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    bf16 = ["--mixed_precision", "bf16"]
    assert train_main([*tiny_train_args(tiny_model, ag_news_dir, reference, **RUN), *bf16]) == 0
    assert _metrics(reference)["train"]["mixed_precision"] == "bf16"
    shutil.copytree(reference / "checkpoints" / "step-00000012", resumed / "checkpoints" / "step-00000012")
    shutil.copy(reference / "log.jsonl", resumed / "log.jsonl")  # the interrupted run's, which went on past step 12
    assert train_main([*tiny_train_args(tiny_model, ag_news_dir, resumed, **RUN), *bf16]) == 0
    assert _losses(resumed) == _losses(reference)  # every step's loss bitwise the uninterrupted run's
    assert_same_weights(reference / "model" / "model.safetensors", resumed / "model" / "model.safetensors")


def test_a_bf16_runs_metrics_describe_the_saved_model_as_it_is_used(unpinned, tiny_model, ag_news_dir, tmp_path):
    """Trained under bf16 autocast, evaluated at the end as pipeline() and distrinews evaluate run the saved
    model, in fp32: metrics.json equals evaluate's to the last bit, the loss and NLL included."""
    from distrinews.cli import main as cli_main

    output_dir = tmp_path / "out"
    assert train_main([*tiny_train_args(tiny_model, ag_news_dir, output_dir, max_steps=6), "--mixed_precision",
                       "bf16"]) == 0
    assert cli_main(["evaluate", "--model", str(output_dir / "model"), "--dataset", str(ag_news_dir), "--seed", "7",
                     "--validation_fraction", "0.1", "--max_length", "64", "--per_device_eval_batch_size", "7",
                     "--dataloader_num_workers", "0", "--output", str(tmp_path / "test.json")]) == 0
    trained, evaluated = _metrics(output_dir)["test"], json.loads((tmp_path / "test.json").read_text())
    assert (evaluated["loss"], evaluated["calibration"]["after"]) == (trained["loss"], trained["calibration"]["after"])
    assert evaluated["confusion_matrix"] == trained["confusion_matrix"]


def test_bf16_on_two_processes_trains_like_one_process_with_double_batch(tiny_model, ag_news_dir, tmp_path):
    runs = {}
    for processes, batch in ((2, 8), (1, 16)):
        runs[processes] = tmp_path / f"p{processes}"
        accelerate_launch(tiny_train_args(tiny_model, ag_news_dir, runs[processes], logging_steps=1,
                                          per_device_train_batch_size=batch),
                          num_processes=processes, mixed_precision="bf16")
    assert _metrics(runs[2])["train"]["mixed_precision"] == "bf16"
    two, one = _losses(runs[2]), _losses(runs[1])
    assert [step for step, _ in two] == [step for step, _ in one] == list(range(1, 27))
    for (step, a), (_, b) in zip(two, one):
        assert abs(a - b) <= BF16_LOSS_TOLERANCE * max(1.0, abs(b)), f"step {step}: 2x8 loss {a} != 1x16 loss {b}"
    assert abs(two[0][1] - two[-1][1]) > 0.1  # the curve moves, so agreement is not trivial

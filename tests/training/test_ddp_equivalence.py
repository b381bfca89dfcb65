"""2 processes x batch B must train exactly like 1 process x batch 2B (same global batches, DDP averaging)."""

from __future__ import annotations

import json

from conftest import REFERENCE_RUN, REFERENCE_STEPS, accelerate_launch, tiny_train_args


def _losses(output_dir):
    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["type"] == "train"]


def test_two_processes_match_one_process_with_double_batch(reference_run, tiny_model, ag_news_dir, tmp_path):
    # The shared reference run (conftest.py): 2 processes x 8 per batch, a loss logged at every step.
    one = tmp_path / "one"
    accelerate_launch(tiny_train_args(tiny_model, ag_news_dir, one, **REFERENCE_RUN, per_device_train_batch_size=16),
                      num_processes=1)
    two_losses, one_losses = _losses(reference_run), _losses(one)
    assert [s for s, _ in two_losses] == [s for s, _ in one_losses] == list(range(1, REFERENCE_STEPS + 1))
    for (step, a), (_, b) in zip(two_losses, one_losses):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), f"step {step}: 2x8 loss {a} != 1x16 loss {b}"
    # Sanity: the curve actually moves, so agreement is not trivial.
    assert abs(two_losses[0][1] - two_losses[-1][1]) > 1e-3

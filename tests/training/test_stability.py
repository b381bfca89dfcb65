"""Non-finite gradients: the update is skipped (on the device for fused AdamW) and persistence stops training."""

from __future__ import annotations

import pytest
import torch

from distrinews.training.stability import NonFiniteGuard, NonFiniteLossError


def _setup(fused: bool):
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=fused or None)
    guard = NonFiniteGuard(optimizer, limit=3, scaler_handles_overflow=False)
    return layer, optimizer, guard


def _backward(layer, poison: bool):
    loss = layer(torch.ones(1, 4)).sum() * (float("nan") if poison else 1.0)
    loss.backward()
    return torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-on-device", "host-check"])
def test_non_finite_step_changes_nothing(fused):
    layer, optimizer, guard = _setup(fused)
    guard.step(optimizer.step, _backward(layer, poison=False))
    optimizer.zero_grad()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    moments = [optimizer.state[p]["exp_avg"].clone() for p in layer.parameters()]
    steps = [float(optimizer.state[p]["step"]) for p in layer.parameters()]
    guard.step(optimizer.step, _backward(layer, poison=True))
    optimizer.zero_grad()
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())
    assert all(torch.equal(m, optimizer.state[p]["exp_avg"]) for m, p in zip(moments, layer.parameters()))
    assert [float(optimizer.state[p]["step"]) for p in layer.parameters()] == steps
    assert int(guard.consecutive) == 1
    guard.step(optimizer.step, _backward(layer, poison=False))
    assert int(guard.consecutive) == 0
    assert not torch.equal(before["weight"], layer.weight)


def test_persistent_non_finite_stops_with_a_clear_error():
    layer, optimizer, guard = _setup(True)
    for step in range(1, 3):
        guard.step(optimizer.step, _backward(layer, poison=True))
        optimizer.zero_grad()
        guard.raise_if_persistent(int(guard.consecutive), step, last_good=None)
    guard.step(optimizer.step, _backward(layer, poison=True))
    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row .* runs/x/checkpoints/step-2"):
        guard.raise_if_persistent(int(guard.consecutive), 3, last_good="runs/x/checkpoints/step-2")
    assert torch.isfinite(layer.weight).all()

"""Where a sweep's parameters come from (study.py), with the real Optuna and SQLite storage and no training: every
process that opens the study (the sweep run again after an interruption, a second worker with the same --seed)
draws new parameters for its new trials, and the draws stay reproducible from the seed."""

from __future__ import annotations

import math

import pytest

optuna = pytest.importorskip("optuna")

from distrinews.sweep.space import load_search_space  # noqa: E402
from distrinews.sweep.study import next_trial, open_study  # noqa: E402

SPACE = """\
learning_rate: {low: 1.0e-6, high: 1.0e-2, log: true}
warmup_ratio: {low: 0.0, high: 0.3}
num_train_epochs: {low: 1, high: 5, step: 1}
"""


@pytest.fixture
def space(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    return load_search_space(tmp_path / "space.yaml", {})


def draw(url: str, space, count: int, seed: int = 0) -> list[dict]:
    """Open the study as a sweep process does and draw ``count`` trials' parameters, each told complete."""
    storage, study = open_study(url, "study", "maximize", pruner=optuna.pruners.NopPruner(), seed=seed,
                                heartbeat_interval=60)
    drawn = []
    for _ in range(count):
        trial = next_trial(study, storage, n_trials=100, deadline=math.inf, poll_seconds=0.1, seed=seed)
        params = space.suggest(trial)
        study.tell(trial, params["learning_rate"])
        drawn.append(params)
    return drawn


def test_a_sweep_run_again_draws_new_parameters(space, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first, second = draw(url, space, 3), draw(url, space, 3)
    assert len({tuple(sorted(params.items())) for params in first + second}) == 6


def test_two_workers_with_the_same_seed_draw_different_parameters(space, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage_a, study_a = open_study(url, "study", "maximize", pruner=None, seed=0, heartbeat_interval=60)
    storage_b, study_b = open_study(url, "study", "maximize", pruner=None, seed=0, heartbeat_interval=60)
    trial_a = next_trial(study_a, storage_a, 10, math.inf, 0.1, seed=0)
    trial_b = next_trial(study_b, storage_b, 10, math.inf, 0.1, seed=0)
    assert trial_a.number != trial_b.number
    assert space.suggest(trial_a) != space.suggest(trial_b)


def test_the_draws_are_reproducible_from_the_seed(space, tmp_path):
    one, two = (draw(f"sqlite:///{tmp_path / name}", space, 3) for name in ("one.db", "two.db"))
    assert one == two
    assert draw(f"sqlite:///{tmp_path / 'other.db'}", space, 3, seed=1) != one

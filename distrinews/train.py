"""``python -m distrinews.train`` and ``accelerate launch -m distrinews.train``: the training entry point.

The loop itself is ``distrinews.training.loop``; this name is the one every launch command uses, and it connects
the listeners the loop cannot import: the Hub's (``distrinews.hub.callbacks``: checkpoint uploads, the push) and,
in a trial that ``distrinews sweep --launch`` started, the sweep's pruning (``distrinews.sweep.pruning``; Optuna is
imported only then).
"""

from __future__ import annotations

import sys
from typing import Sequence

from .training.config import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    # --help and a misspelt flag are answered here, before the seconds of importing torch and transformers.
    build_parser().parse_args(argv)
    from .training.loop import main as train_main

    return train_main(argv, callbacks_for=_listeners)


def _listeners(config) -> list:
    from .hub.callbacks import hub_callbacks
    from .sweep.pruning import pruning_from_environment

    return [*hub_callbacks(config), *pruning_from_environment()]


if __name__ == "__main__":
    sys.exit(main())

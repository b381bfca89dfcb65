"""``python -m distrinews.train`` and ``accelerate launch -m distrinews.train``: the training entry point.

The loop itself is ``distrinews.training.loop``; this name is the one every launch command uses, and it connects
the Hub's listeners (``distrinews.hub.callbacks``: checkpoint uploads, the push) that the loop cannot import.
"""

from __future__ import annotations

import sys
from typing import Sequence

from .training.config import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    # --help and a misspelt flag are answered here, before the seconds of importing torch and transformers.
    build_parser().parse_args(argv)
    from .hub.callbacks import hub_callbacks
    from .training.loop import main as train_main

    return train_main(argv, callbacks_for=hub_callbacks)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m distrinews.train`` and ``accelerate launch -m distrinews.train``: the training entry point.

The loop itself is ``distrinews.training.loop``; this name is the one every launch command uses.
"""

import sys

from .training.loop import main

if __name__ == "__main__":
    sys.exit(main())

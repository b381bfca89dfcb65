"""A torch file whose pickle runs a shell command when fully unpickled: what a hostile checkpoint plants."""

from __future__ import annotations

import os
from pathlib import Path


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def plant_pickle(path: Path, marker: Path) -> None:
    """Write ``path`` as torch.save does; a full unpickle (weights_only=False) creates ``marker``."""
    import torch

    torch.save({"state": _RunsCommand(f"touch {marker}")}, path)

"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically, so readers never see half a file."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=2) + "\n")
    staging.replace(path)

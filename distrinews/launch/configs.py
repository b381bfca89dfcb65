"""The accelerate launch settings DistriNews ships, found from a clone and from a ``pip install``.

    distrinews launch-config multi_gpu          # prints the YAML's path, for accelerate launch --config_file
    accelerate launch --config_file "$(distrinews launch-config cpu)" -m distrinews.train --output_dir runs/cpu

In a clone the YAMLs are in ``accelerate_configs/`` at the repository root; the wheel carries the same files
as ``distrinews/accelerate_configs/`` (core/shipped_files.py looks in both places).
"""

from __future__ import annotations

from pathlib import Path

from ..core.shipped_files import shipped_file

LAUNCH_CONFIG_NAMES = ("cpu", "single_gpu", "multi_gpu", "multi_node")


def launch_config_path(name: str) -> Path:
    """Path of a shipped YAML by name (``cpu``, ``single_gpu``, ``multi_gpu``, ``multi_node``; ``.yaml`` optional)."""
    stem = name.removesuffix(".yaml")
    if stem not in LAUNCH_CONFIG_NAMES:
        raise ValueError(f"no launch config named {name!r}: choose one of {', '.join(LAUNCH_CONFIG_NAMES)}")
    return shipped_file("accelerate_configs", f"{stem}.yaml")

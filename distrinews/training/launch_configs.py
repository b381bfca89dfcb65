"""The accelerate launch settings DistriNews ships, found from a clone and from a ``pip install``.

    distrinews launch-config multi_gpu          # prints the YAML's path, for accelerate launch --config_file
    accelerate launch --config_file "$(distrinews launch-config cpu)" -m distrinews.train --output_dir runs/cpu

In a clone the YAMLs are in ``accelerate_configs/`` at the repository root; the wheel carries the same files
as ``distrinews/accelerate_configs/`` (see pyproject.toml), so both places are looked at.
"""

from __future__ import annotations

from pathlib import Path

LAUNCH_CONFIG_NAMES = ("cpu", "single_gpu", "multi_gpu", "multi_node")

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_CANDIDATE_DIRS = (_PACKAGE_DIR / "accelerate_configs", _PACKAGE_DIR.parent / "accelerate_configs")


def launch_config_dir() -> Path:
    """The folder holding the shipped YAMLs: inside the installed package, else the clone's root."""
    for folder in _CANDIDATE_DIRS:
        if all((folder / f"{name}.yaml").is_file() for name in LAUNCH_CONFIG_NAMES):
            return folder
    raise FileNotFoundError("the accelerate launch configs are missing: looked in "
                            + " and ".join(str(folder) for folder in _CANDIDATE_DIRS) + "; reinstall distrinews")


def launch_config_path(name: str) -> Path:
    """Path of a shipped YAML by name (``cpu``, ``single_gpu``, ``multi_gpu``, ``multi_node``; ``.yaml`` optional)."""
    stem = name.removesuffix(".yaml")
    if stem not in LAUNCH_CONFIG_NAMES:
        raise ValueError(f"no launch config named {name!r}: choose one of {', '.join(LAUNCH_CONFIG_NAMES)}")
    return launch_config_dir() / f"{stem}.yaml"

"""Files the repository keeps in a root folder (``accelerate_configs/``, ``notebooks/``) and the wheel carries
inside the package as ``distrinews/<folder>/`` (see pyproject.toml), found from a clone and from a ``pip install``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def shipped_file(folder: str, name: str) -> Path:
    """``folder/name`` inside the installed package, else in the clone the package is imported from."""
    candidates = (_PACKAGE_DIR / folder / name, _PACKAGE_DIR.parent / folder / name)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} is missing: looked for {' and '.join(map(str, candidates))}; "
                            "reinstall distrinews")

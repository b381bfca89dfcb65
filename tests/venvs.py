"""Fresh virtual environments for the install tests, built with uv.

Each is a real, isolated environment (``uv venv``: no system site-packages, no PYTHONPATH) of this interpreter's
Python, filled by ``uv pip install`` from the package sources pip is configured with here (``pip config list``:
index, extra indexes, find-links, constraints; uv reads none of pip's settings itself). uv installs from its
cache by hard links, so an environment that took pip minutes takes seconds once the cache holds its packages.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from uv import find_uv_bin

# pip's setting -> uv's option; each may hold several values separated by spaces.
_PIP_TO_UV = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
              "constraint": "--constraint"}


@functools.cache
def pip_sources() -> tuple[str, ...]:
    """pip's configured package sources as uv options, searched as pip searches them: every index for the best
    match (uv's default stops at the first index that has the package)."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    options: list[str] = []
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        flag = _PIP_TO_UV.get(key.rsplit(".", 1)[-1])
        for item in value.strip().strip("'\"").split() if flag else ():
            if item not in options:
                options += [flag, item]
    return ("--index-strategy", "unsafe-best-match", *options)


@dataclass
class Venv:
    root: Path
    python: Path
    env: dict  # for what runs inside it: its bin/ first on PATH, no PYTHONPATH, no token

    @functools.cached_property
    def site_packages(self) -> Path:
        return Path(self.run(str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                             cwd=self.root).stdout.strip())

    def run(self, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)


def make_venv(root: Path, *requirements: str, with_pip: bool = False, compile_bytecode: bool = False,
              timeout: float = 900) -> Venv:
    """A new environment at ``root`` holding ``requirements`` (pip specs; ``-r FILE`` works too). ``with_pip``
    seeds pip into it, for code that runs ``python -m pip`` inside it as users do; ``compile_bytecode`` writes
    the .pyc files pip writes (uv does not by default), for an environment measured as pip would leave it."""
    uv = find_uv_bin()
    seed = ["--seed"] if with_pip else []
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, *seed, str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    if requirements:
        compile_option = ["--compile-bytecode"] if compile_bytecode else []
        install = subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), *compile_option,
                                  *pip_sources(), *requirements], capture_output=True, text=True, timeout=timeout)
        if install.returncode != 0:
            raise VenvInstallError(install.stderr[-3000:])
    env = {name: value for name, value in os.environ.items()
           if name not in ("PYTHONPATH", "PYTHONHOME", "HF_TOKEN", "PIP_REQUIRE_VIRTUALENV")}
    env.update(PATH=os.pathsep.join([str(root / "bin"), env.get("PATH", "")]), VIRTUAL_ENV=str(root))
    return Venv(root, python, env)


def make_image_venv(root: Path, distributions: tuple[str, ...]) -> Venv:
    """A fresh environment (pip seeded) that already holds ``distributions`` and everything they require, as a
    machine image ships them preinstalled: each file of their install records is hard-linked from this
    environment, bytecode included (an image has it; installing and compiling torch again takes a minute)."""
    venv = make_venv(root, with_pip=True)
    target = venv.site_packages
    for dist in _with_requirements(distributions):
        origin = Path(dist.locate_file("")).resolve()
        for entry in dist.files or ():
            source = Path(dist.locate_file(entry)).resolve()
            if origin not in source.parents or not source.is_file():
                continue  # console scripts in bin/ point at this interpreter; the image's would not
            copy = target / source.relative_to(origin)
            copy.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, copy)
            except OSError:  # another filesystem
                shutil.copy2(source, copy)
    return venv


def _with_requirements(names: tuple[str, ...]) -> list[metadata.Distribution]:
    """These installed distributions and the ones they require (markers evaluated here, no extras)."""
    found: dict[str, metadata.Distribution] = {}
    pending = list(names)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found:
            continue
        found[name] = metadata.distribution(name)
        for line in found[name].requires or ():
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(found.values())


class VenvInstallError(RuntimeError):
    """uv could not install the requirements; the message holds the end of its output."""

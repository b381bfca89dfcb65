"""Write what the official ``kaggle`` CLI uploads to run the notebook on Kaggle with no edit.

    distrinews kaggle --output kaggle-bundle --dataset USER/distrinews-wheel
    kaggle datasets create -p kaggle-bundle/dataset      # the wheel, as a private dataset
    kaggle kernels push -p kaggle-bundle/kernel          # the notebook, with that dataset attached, on 2x T4

The dataset holds the project's wheel, so the notebook installs exactly this code, whatever the session's
internet can reach. The metadata files follow what ``kaggle datasets create`` and ``kaggle kernels push``
read (kaggle-api: ``dataset_create_new`` and ``kernels_push``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import distrinews

from ..core.errors import KaggleBundleError
from ..core.shipped_files import shipped_file

NOTEBOOK_NAME = "distrinews_kaggle.ipynb"
DEFAULT_KERNEL_SLUG = "distrinews-ag-news"
# kernels_push sends machine_shape as the session's accelerator; the kaggle CLI's --accelerator help names
# "NvidiaTeslaT4" as GPU T4 x2.
T4_X2 = "NvidiaTeslaT4"
# Kaggle's name for Apache-2.0, the package's license, in dataset-metadata.json's "licenses".
KAGGLE_APACHE_LICENSE = "apache-2.0"
# The kaggle client's own slug syntax (KaggleApi._validate_slug_syntax): owners may also use underscores.
SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
OWNER = re.compile(r"[a-z0-9]+(?:[_-][a-z0-9]+)*")
# dataset_create_new refuses slugs and titles outside 6..50 characters; the kernel title needs 5 or more.
DATASET_SLUG_LENGTH = (6, 50)
KERNEL_SLUG_LENGTH = (5, 50)
# Left out when the source is copied to build the wheel: the checkout's own build leftovers and run outputs.
_NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "runs", "*.egg-info", "__pycache__", "*.pyc",
                                     ".pytest_cache", "test-artifacts", ".venv", "venv", "kaggle-bundle")


@dataclass(frozen=True)
class KaggleRef:
    owner: str
    slug: str

    def __str__(self) -> str:
        return f"{self.owner}/{self.slug}"

    @property
    def title(self) -> str:
        # Kaggle derives a kernel's slug from its title; this title slugifies back to exactly ``slug``.
        return self.slug.replace("-", " ")


@dataclass(frozen=True)
class Bundle:
    dataset_dir: Path
    kernel_dir: Path
    wheel: Path
    dataset: KaggleRef
    kernel: KaggleRef

    def next_steps(self) -> str:
        return "\n".join([
            f"Wrote {self.dataset_dir} ({self.wheel.name}) and {self.kernel_dir} ({NOTEBOOK_NAME}). Next:",
            f"  kaggle datasets create -p {self.dataset_dir}",
            f"  kaggle kernels push -p {self.kernel_dir} --no-run",
            (f"Then open https://www.kaggle.com/code/{self.kernel}, add the secret HF_TOKEN (Add-ons -> Secrets) "
             "and Run all (or Save Version -> Save & Run All, which goes on with the tab closed). Without "
             "--no-run, the push also starts a run at once, before the secret is attached: it trains but pushes "
             "nothing. After a code change, build the bundle again into a new folder and `kaggle datasets "
             "version -p NEW_FOLDER/dataset -m MESSAGE`."),
        ])


def parse_ref(text: str, what: str, length: tuple[int, int]) -> KaggleRef:
    """``USER/SLUG`` checked against Kaggle's slug rules, or an error saying which rule it breaks."""
    owner, _, slug = text.partition("/")
    problem = None
    if not owner or not slug or "/" in slug:
        problem = "must be USER/SLUG, e.g. jane/distrinews-wheel"
    elif not OWNER.fullmatch(owner):
        problem = (f"the user {owner!r} must be lowercase letters and digits, with single '-' or '_' between "
                   "them (your Kaggle username)")
    elif not SLUG.fullmatch(slug):
        problem = (f"the slug {slug!r} must be lowercase letters and digits, with single '-' between them "
                   "(no '_', spaces or capitals)")
    elif not length[0] <= len(slug) <= length[1]:
        problem = f"the slug {slug!r} has {len(slug)} characters; Kaggle takes {length[0]} to {length[1]}"
    if problem:
        raise KaggleBundleError(f"{what} {text!r}: {problem}")
    return KaggleRef(owner, slug)


def source_checkout() -> Path | None:
    """The repository the imported package comes from, or None for an installed package."""
    root = Path(distrinews.__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "notebooks" / NOTEBOOK_NAME).is_file():
        return root
    return None


def build_wheel(source: Path, destination: Path) -> Path:
    """Build the project's wheel (no dependencies) from a copy of ``source`` into ``destination``.

    From a copy because setuptools reuses the build/ folder it leaves in the tree it builds, which can carry a
    deleted module into the wheel.
    """
    with tempfile.TemporaryDirectory(prefix="distrinews-wheel-") as scratch:
        copy = Path(scratch) / "source"
        shutil.copytree(source, copy, ignore=_NOT_SOURCE)
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
                                str(destination), str(copy)], capture_output=True, text=True)
        if built.returncode != 0:
            raise KaggleBundleError(f"building the wheel from {source} failed (pip exit {built.returncode}):\n"
                                    f"{(built.stdout + built.stderr)[-3000:]}")
    wheels = sorted(destination.glob("distrinews-*.whl"))
    if len(wheels) != 1:
        raise KaggleBundleError(f"pip wheel left {len(wheels)} distrinews wheels in {destination}, expected one")
    return wheels[0]


def checked_wheel(path: str | Path) -> Path:
    wheel = Path(path)
    if not wheel.is_file():
        raise KaggleBundleError(f"--wheel {wheel}: no such file")
    if not (wheel.name.startswith("distrinews-") and wheel.suffix == ".whl"):
        raise KaggleBundleError(f"--wheel {wheel}: expected a distrinews wheel (distrinews-VERSION-...whl)")
    return wheel


def dataset_metadata(dataset: KaggleRef) -> dict:
    return {"title": dataset.title, "id": str(dataset), "licenses": [{"name": KAGGLE_APACHE_LICENSE}],
            "subtitle": "The distrinews wheel, for its Kaggle notebook"}


def kernel_metadata(kernel: KaggleRef, dataset: KaggleRef) -> dict:
    return {
        "id": str(kernel), "title": kernel.title, "code_file": NOTEBOOK_NAME, "language": "python",
        "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_tpu": False,
        "enable_internet": True, "machine_shape": T4_X2, "dataset_sources": [str(dataset)],
        "competition_sources": [], "kernel_sources": [], "model_sources": [],
    }


def write_bundle(output: str | Path, dataset: str, kernel: str | None = None,
                 wheel: str | Path | None = None) -> Bundle:
    """Write ``output``/dataset and ``output``/kernel; ``output`` must be new or empty, and is left as it was
    on any error."""
    dataset_ref = parse_ref(dataset, "--dataset", DATASET_SLUG_LENGTH)
    kernel_ref = (parse_ref(kernel, "--kernel", KERNEL_SLUG_LENGTH) if kernel
                  else KaggleRef(dataset_ref.owner, DEFAULT_KERNEL_SLUG))
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise KaggleBundleError(f"--output {output} is not an empty folder: give a new or empty one")
    checkout = source_checkout()
    if checkout is None and wheel is None:
        raise KaggleBundleError(
            f"distrinews is installed at {Path(distrinews.__file__).parent}, not run from a source checkout, so "
            "there is no source to build its wheel from: pass --wheel with the distrinews wheel to ship (the one "
            "you installed, say), or run this from a clone of the repository")
    prebuilt = checked_wheel(wheel) if wheel else None

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        dataset_dir, kernel_dir = staging / "dataset", staging / "kernel"
        dataset_dir.mkdir()
        kernel_dir.mkdir()
        if prebuilt:
            shutil.copy2(prebuilt, dataset_dir / prebuilt.name)
        else:
            build_wheel(checkout, dataset_dir)
        (dataset_dir / "dataset-metadata.json").write_text(json.dumps(dataset_metadata(dataset_ref), indent=2) + "\n")
        shutil.copy2(shipped_file("notebooks", NOTEBOOK_NAME), kernel_dir / NOTEBOOK_NAME)
        (kernel_dir / "kernel-metadata.json").write_text(
            json.dumps(kernel_metadata(kernel_ref, dataset_ref), indent=2) + "\n")
        if output.exists():
            output.rmdir()  # empty, checked above
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    wheel_path = next((output / "dataset").glob("distrinews-*.whl"))
    return Bundle(output / "dataset", output / "kernel", wheel_path, dataset_ref, kernel_ref)

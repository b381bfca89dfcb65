"""The package as `pip install` users get it: the wheel builds from a clean copy, holds every module, the licence
and the accelerate YAMLs, finds those YAMLs from its installed location, and `distrinews launch` trains on the
hardware it finds (here: 2 CPU processes over gloo) with the YAML it ships.

(Installing the wheel with its dependencies into a fresh virtual environment and running the CLI there is in
tests/end_to_end/test_kaggle_bundle.py, which shares that environment with the Kaggle notebook run.)
"""

from __future__ import annotations

import email
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from conftest import REPO_ROOT, free_port, tiny_train_args
from hub_mirror import serve_models
from distrinews.kaggle.bundle import build_wheel
from distrinews.launch.configs import LAUNCH_CONFIG_NAMES, launch_config_path

DISTRINEWS = shutil.which("distrinews") or pytest.fail("the distrinews console script is not installed")
CACHED_MODEL = "distrinews-test/tiny-cached"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # The project's one wheel build (what `distrinews kaggle` ships): pip wheel of a clean copy of the clone.
    return build_wheel(REPO_ROOT, tmp_path_factory.mktemp("wheel"))


def test_wheel_holds_every_module_the_licence_the_launch_configs_and_the_notebook(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "distrinews").rglob("*.py")
               if "__pycache__" not in path.parts}
    assert modules and not modules - names, f"missing from the wheel: {sorted(modules - names)}"
    # Nothing else either: a module deleted from the clone must not come back from a stale build/ folder.
    assert modules == {name for name in names if name.endswith(".py")}
    configs = {f"distrinews/accelerate_configs/{name}.yaml" for name in LAUNCH_CONFIG_NAMES}
    assert configs <= names and "distrinews/notebooks/distrinews_kaggle.ipynb" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not [name for name in names if name.startswith(("tests/", "app/", "benchmarks/"))]


def test_wheel_metadata_is_pep_621_with_the_licence_and_console_script(wheel):
    archive = zipfile.ZipFile(wheel)
    dist_info = next(name.split("/")[0] for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
    metadata = email.message_from_bytes(archive.read(f"{dist_info}/METADATA"))
    assert metadata["Name"] == "distrinews" and metadata["License-Expression"] == "Apache-2.0"
    requires = " ".join(metadata.get_all("Requires-Dist"))
    for package in ("torch", "transformers", "datasets", "accelerate", "huggingface_hub"):
        assert package in requires
    entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert "distrinews = distrinews.cli:main" in entry_points
    assert re.search(r"^distrinews = distrinews\.cli:main$", entry_points, flags=re.MULTILINE)
    assert "Apache License" in (REPO_ROOT / "LICENSE").read_text()


def test_installed_layout_finds_its_own_launch_configs(wheel, tmp_path):
    # The unpacked wheel is exactly what site-packages holds after `pip install`; no clone is reachable from it.
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from distrinews.launch.configs import launch_config_path as p; "
            "from distrinews.launch.plan import plan_launch; "
            "print(p('multi_gpu')); print(plan_launch([]).launch_args()[1])")
    # -I: neither PYTHONPATH nor the current folder is on sys.path; only the unpacked wheel is added.
    result = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(site / "distrinews/accelerate_configs/multi_gpu.yaml"),
                                     str(site / "distrinews/accelerate_configs/cpu.yaml")]


def test_launch_config_command_prints_loadable_yaml_paths():
    assert launch_config_path("cpu").parent == REPO_ROOT / "accelerate_configs"  # a clone uses the files it shows
    for name in LAUNCH_CONFIG_NAMES:
        result = subprocess.run([DISTRINEWS, "launch-config", name], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and Path(result.stdout.strip()) == launch_config_path(name)
        load_config_from_file(result.stdout.strip())
    refused = subprocess.run([DISTRINEWS, "launch-config", "four_gpu"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "invalid choice: 'four_gpu'" in refused.stderr


def _without_accelerate_on_path() -> dict:
    """The environment of a cron job or an IDE's run button using a venv that is not activated: no folder on PATH
    holds an `accelerate` executable, and VIRTUAL_ENV is unset."""
    folders = [folder for folder in os.environ.get("PATH", "").split(os.pathsep)
               if folder and shutil.which("accelerate", path=folder) is None]
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(folders)
    assert shutil.which("accelerate", path=env["PATH"]) is None
    return env


def test_launch_trains_from_an_unactivated_venv_offline_from_the_cache(tiny_model, ag_news_dir, tmp_path):
    """`distrinews launch` by its full path, with no `accelerate` on PATH and a Hub that cannot be reached: it runs
    accelerate with its own interpreter, and takes the model (a Hub id) from the local cache, offline."""
    hf_home = tmp_path / "hf-home"
    with serve_models(tmp_path / "mirror", {CACHED_MODEL: tiny_model}) as mirror:  # an earlier, online download
        fetched = subprocess.run([sys.executable, "-c", f"import huggingface_hub as h; h.snapshot_download({CACHED_MODEL!r})"],
                                 env={**os.environ, **mirror.client_env(hf_home)}, capture_output=True, text=True,
                                 timeout=120)
        assert fetched.returncode == 0, fetched.stderr[-2000:]
    env = {**_without_accelerate_on_path(), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0",
           "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    run_dir = tmp_path / "run"
    command = [DISTRINEWS, "launch", "--main_process_port", str(free_port()),
               *tiny_train_args(CACHED_MODEL, ag_news_dir, run_dir, num_train_epochs=1, max_steps=3)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no GPU found: 2 CPU processes" in result.stdout
    interpreter = Path(DISTRINEWS).read_text().splitlines()[0].removeprefix("#!")  # the script's own, not this one
    assert f"{interpreter} -m accelerate.commands.launch --config_file {launch_config_path('cpu')}" in result.stdout
    assert f"the Hub at {env['HF_ENDPOINT']} cannot be reached" in result.stdout
    assert "training offline from the local cache (HF_HUB_OFFLINE=1)" in result.stdout
    assert "estimate: " in result.stdout and "--max_train_samples 2000" in result.stdout
    assert (run_dir / "model" / "config.json").is_file() and (run_dir / "metrics.json").is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["num_processes"] == 2


def test_readme_main_command_is_the_launch_tested_here():
    first_block = (REPO_ROOT / "README.md").read_text().split("```bash\n")[1].split("```")[0].strip()
    assert first_block == "pip install -e . && distrinews launch --output_dir runs/ag_news"
    result = subprocess.run([DISTRINEWS, "launch", "--dry_run", "--output_dir", "runs/ag_news"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "-m distrinews.train --output_dir runs/ag_news" in result.stdout

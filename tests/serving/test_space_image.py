"""The Space as its image runs it: a fresh virtual environment built from app/requirements.txt alone (no torch, no
transformers), serving a model whose int8 graph was shipped with it, by local folder and through a real
Hub-compatible server; and what the serving path imports.

The virtual environment installs from the package index like the image build does (with uv: tests/venvs.py), so
this test needs the index (CI has it); it skips, saying so, when the index cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import REPO_ROOT
from distrinews.serving.export import SHIPPED_GRAPH, shipped_graph
from hub_mirror import HubMirror
from space_support import LABELS, space_env, uvicorn_server
from venvs import VenvInstallError, make_venv

TRAINING_LIBRARIES = ("torch", "transformers", "datasets", "accelerate", "matplotlib")




def test_serving_a_shipped_graph_imports_no_training_library(shipped_space_model, tmp_path):
    script = ("import json, sys\n"
              "from distrinews.serving.service import ClassifierService, ServingConfig\n"
              "service = ClassifierService.load(ServingConfig.from_env())\n"
              "import app.app\n"
              "print(json.dumps({'quantization': service.quantization, 'label': service.predict_now(['nasa'])[0].label,"
              f" 'imported': [m for m in {TRAINING_LIBRARIES!r} if m in sys.modules]}}))\n")
    env = {**os.environ, **space_env(str(shipped_space_model), tmp_path / "empty-cache", QUANTIZE="int8"),
           "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"quantization": "int8", "label": report["label"], "imported": []}
    assert not (tmp_path / "empty-cache").exists()  # nothing was exported


def test_a_stale_or_foreign_graph_is_not_served(shipped_space_model, tmp_path):
    import shutil

    copy = Path(shutil.copytree(shipped_space_model, tmp_path / "copy"))
    assert shipped_graph(copy) == copy / SHIPPED_GRAPH
    info = json.loads((copy / "onnx" / "export.json").read_text())
    (copy / "onnx" / "export.json").write_text(json.dumps({**info, "recipe": "an-older-recipe"}))
    assert shipped_graph(copy) is None
    (copy / "onnx" / "export.json").write_text(json.dumps(info))
    with (copy / "model.safetensors").open("r+b") as handle:  # retrained weights, same file name
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    assert shipped_graph(copy) is None


def test_a_graph_shipped_in_a_hub_repo_is_found_in_its_snapshot(shipped_space_model, tmp_path):
    script = ("import sys\n"
              "from distrinews.serving.export import SHIPPED_GRAPH, shipped_graph\n"
              "from distrinews.core.model_files import resolve_model_folder\n"
              "folder = resolve_model_folder('distrinews/shipped', sys.argv[1], extra_patterns=(SHIPPED_GRAPH,))\n"
              "print(folder.name, shipped_graph(folder) == folder / SHIPPED_GRAPH)\n")
    with HubMirror(tmp_path / "hub") as mirror:
        sha = mirror.commit("distrinews/shipped", shipped_space_model, "model with its int8 graph")
        result = subprocess.run([sys.executable, "-c", script, sha], cwd=REPO_ROOT, capture_output=True, text=True,
                                env={**os.environ, **mirror.client_env(tmp_path / "hf-home")}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [sha, "True"]


def _venv_with_space_requirements(folder: Path) -> Path:
    try:
        # With the bytecode pip writes, so its size is the image's (the Dockerfile installs with pip).
        return make_venv(folder, "-r", str(REPO_ROOT / "app" / "requirements.txt"), compile_bytecode=True).python
    except VenvInstallError as err:
        if "Failed to fetch" in str(err) or "error sending request" in str(err):
            pytest.skip(f"the package index cannot be reached: {str(err)[-300:]}")
        raise


def test_the_space_runs_from_a_fresh_environment_of_its_requirements(shipped_space_model, tmp_path):
    python = _venv_with_space_requirements(tmp_path / "venv")
    installed = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in "
                                f"{TRAINING_LIBRARIES!r} if u.find_spec(m)])"], capture_output=True, text=True)
    assert installed.stdout.strip() == "[]", installed  # the image has none of them
    size_mb = sum(f.stat().st_size for f in (tmp_path / "venv").rglob("*") if f.is_file()) / 2**20
    print(f"the Space's environment: {size_mb:.0f} MiB")
    # 478 MiB by `du` for pip's build (docs/README-space.md), 418 MiB for this one (uv, no pip in it); the CPU build
    # of torch alone is over 700 MiB.
    assert size_mb < 700, f"the Space's environment grew to {size_mb:.0f} MiB"
    with uvicorn_server(str(shipped_space_model), tmp_path / "onnx", tmp_path / "uvicorn.log", python=str(python),
                        QUANTIZE="auto") as base_url:
        info = httpx.get(f"{base_url}/api/info").json()
        assert info["quantization"] == "int8" and info["labels"] == LABELS
        response = httpx.post(f"{base_url}/api/predict", content=json.dumps({"texts": ["stocks rally", "\ud800 odd"]}),
                              headers={"content-type": "application/json"})
        assert response.status_code == 200 and len(response.json()["predictions"]) == 2
        assert httpx.get(f"{base_url}/").status_code == 200  # the Gradio page

"""Helpers for the Space tests: a tiny model with AG News label names and a model card, and the real app
under uvicorn on 127.0.0.1 (a subprocess), addressed by a model id so a Hub mirror can stand in for a path."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx

from conftest import REPO_ROOT, free_port, write_tiny_model

# `app` is the Space folder, not an installed package: make `import app.app` work under plain `pytest` too
# (only `python -m pytest` puts the working directory on sys.path).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
CARD_TEST_ACCURACY = 0.9123
ARTIFACTS = REPO_ROOT / "test-artifacts"


def write_space_model(folder: Path) -> Path:
    """The conftest tiny DistilBERT, with the AG News label names and a model card holding a test accuracy."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    from transformers import AutoConfig

    write_tiny_model(folder)
    config = AutoConfig.from_pretrained(folder)
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {name: i for i, name in enumerate(LABELS)}
    config.save_pretrained(folder)
    data = ModelCardData(model_name="tiny-space-test", eval_results=[EvalResult(
        task_type="text-classification", dataset_type="fancyzhx/ag_news", dataset_name="AG News",
        dataset_split="test", metric_type="accuracy", metric_value=CARD_TEST_ACCURACY)])
    ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n# tiny\n").save(folder / "README.md")
    return folder


def space_env(model_id: str, cache_dir: Path, **settings: str) -> dict[str, str]:
    env = {"MODEL_ID": model_id, "ONNX_CACHE_DIR": str(cache_dir), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.update({key: str(value) for key, value in settings.items()})
    return env


def wait_until_ready(base_url: str, timeout: float, process: subprocess.Popen | None = None) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"uvicorn exited with {process.returncode} before the model was ready")
        with contextlib.suppress(httpx.HTTPError):
            last = httpx.get(f"{base_url}/api/ready", timeout=5)
            if last.status_code == 200:
                return httpx.get(f"{base_url}/api/info", timeout=5).json()
            if last.json().get("status") == "failed":
                raise AssertionError(f"model failed to load: {last.json()}")
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout} s; last /api/ready: {last and last.text}")


@contextlib.contextmanager
def uvicorn_server(model_id: str, cache_dir: Path, log_path: Path, timeout: float = 180, python: str = sys.executable,
                   **settings: str) -> Iterator[str]:
    """``python -m uvicorn app.app:app`` on a free loopback port; yields its base URL once /api/ready is 200."""
    port = free_port()
    env = {**os.environ, **space_env(model_id, cache_dir, **settings), "PYTHONPATH": str(REPO_ROOT)}
    with log_path.open("w") as log:
        process = subprocess.Popen([python, "-m", "uvicorn", "app.app:app", "--host", "127.0.0.1",
                                    "--port", str(port), "--no-access-log"], cwd=REPO_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(base_url, timeout, process)
            yield base_url
        except BaseException:
            process.terminate()
            process.wait(30)
            print(log_path.read_text()[-6000:], file=sys.stderr)
            raise
        process.terminate()
        assert process.wait(30) is not None

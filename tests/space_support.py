"""Helpers for the Space tests: a tiny model with AG News label names and a model card, and the real app
under uvicorn on 127.0.0.1 (a subprocess), addressed by a model id so a Hub mirror can stand in for a path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx

from conftest import ODD_TEXTS, REPO_ROOT, ag_news_rows, free_port, write_tiny_model

# `app` is the Space folder, not an installed package: make `import app.app` work under plain `pytest` too
# (only `python -m pytest` puts the working directory on sys.path).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
# Debian's headless Chromium, driven by Playwright (its own browser download cannot work offline).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
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


def with_config(source: Path, folder: Path, **keys) -> Path:
    """A copy of the model in ``source`` whose config.json also holds ``keys`` (e.g. what a training run decided
    on validation: ``abstain_below``, ``decision_thresholds``); a shipped int8 graph stays valid (it matches the
    weights, which are the same)."""
    shutil.copytree(source, folder)
    config_file = folder / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **keys}, indent=2))
    return folder


@contextlib.contextmanager
def demo_page(base_url: str):
    """(playwright's sync_api, a page) on the Space's demo, once it shows the model's summary; the test skips
    where playwright is not installed."""
    import pytest

    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base_url + "/", wait_until="domcontentloaded")
            sync_api.expect(page.get_by_text("test accuracy")).to_be_visible(timeout=30_000)
            yield sync_api, page
        finally:
            browser.close()


def expect_given_line(sync_api, page, text: str, line: str) -> None:
    """Classify ``text`` on the Classify tab; the line under the scores must read ``line``."""
    page.locator("#headline textarea").fill(text)
    page.locator("#classify").click()
    sync_api.expect(page.locator("#given")).to_have_text(line, timeout=30_000)


def space_env(model_id: str, cache_dir: Path, **settings: str) -> dict[str, str]:
    env = {"MODEL_ID": model_id, "ONNX_CACHE_DIR": str(cache_dir), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.update({key: str(value) for key, value in settings.items()})
    return env


def wait_until_ready(base_url: str, timeout: float, process: subprocess.Popen | None = None,
                     failing: bool = False) -> dict:
    """/api/info once the model is ready; with ``failing``, /api/ready's answer once loading has failed."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"uvicorn exited with {process.returncode} before the model was ready")
        with contextlib.suppress(httpx.HTTPError):
            last = httpx.get(f"{base_url}/api/ready", timeout=5)
            if last.status_code == 200 and not failing:
                return httpx.get(f"{base_url}/api/info", timeout=5).json()
            if last.json().get("status") == "failed":
                if failing:
                    return last.json()
                raise AssertionError(f"model failed to load: {last.json()}")
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout} s; last /api/ready: {last and last.text}")


@contextlib.contextmanager
def uvicorn_server(model_id: str, cache_dir: Path, log_path: Path, timeout: float = 180, python: str = sys.executable,
                   unset: tuple[str, ...] = (), http: str = "auto", failing: bool = False,
                   **settings: str) -> Iterator[str]:
    """``python -m uvicorn app.app:app`` on a free loopback port; yields its base URL once /api/ready is 200 (with
    ``failing``: once it says loading failed). ``unset`` names variables the server must not see (not even
    space_env's); ``http`` is uvicorn's HTTP parser (auto, h11 or httptools)."""
    port = free_port()
    env = {**os.environ, **space_env(model_id, cache_dir, **settings), "PYTHONPATH": str(REPO_ROOT)}
    env = {key: value for key, value in env.items() if key not in unset}
    with log_path.open("w") as log:
        process = subprocess.Popen([python, "-m", "uvicorn", "app.app:app", "--host", "127.0.0.1",
                                    "--port", str(port), "--no-access-log", "--http", http], cwd=REPO_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(base_url, timeout, process, failing)
            yield base_url
        except BaseException:
            process.terminate()
            process.wait(30)
            print(log_path.read_text()[-6000:], file=sys.stderr)
            raise
        process.terminate()
        assert process.wait(30) is not None


@contextlib.contextmanager
def uvicorn_in_thread(app) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, in this process (so a test can reach into it); yields its
    base URL once it is accepting connections."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def raw_json(body) -> bytes:
    return json.dumps(body).encode("ascii")  # escapes every non-ASCII character, lone surrogates included


def send_concurrently(url: str, bodies: list, concurrency: int = 32, timeout: float = 300) -> list[tuple[int, object]]:
    """POST each body (as the JSON bytes a client sends) to ``url`` from ``concurrency`` keep-alive clients; the
    (status, decoded JSON) of each, in order."""
    import aiohttp

    answers: list = [None] * len(bodies)

    async def send_all():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            async def worker(first: int):
                for i in range(first, len(bodies), concurrency):
                    async with session.post(url, data=raw_json(bodies[i]),
                                            headers={"content-type": "application/json"}) as response:
                        answers[i] = (response.status, await response.json())
            await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(concurrency))), timeout)

    asyncio.run(send_all())
    return answers


INT8_BATCH_TOLERANCE = 5e-3  # as in test_space_api: int8 against fp32, and a text alone against in a batch


def assert_same_scores(got: dict[str, float], alone: dict[str, float]) -> None:
    """Label scores from a batch under load are what the text gets alone, up to what dynamic int8 moves them by
    with the batch a text shares (activations are quantized with one scale per batch), and so the same top label
    wherever it is decided by more than that. The tiny random-init model's top two labels are often only ~6e-5
    apart, and int8 moves them by up to ~5e-5 with the company (2 of 120 headlines then change label; fp32 moves
    them by 1e-9 and changes none), so a label alone is no test of isolation here."""
    assert set(got) == set(alone), (got, alone)
    for label, score in alone.items():
        assert abs(got[label] - score) < INT8_BATCH_TOLERANCE, (got, alone)
    top, second = sorted(alone.values(), reverse=True)[:2]
    if top - second > 2 * INT8_BATCH_TOLERANCE:
        assert max(got, key=got.get) == max(alone, key=alone.get), (got, alone)


HOSTILE_BODIES = [*({"text": text} for text in ODD_TEXTS),
                  {"texts": ["ok", "\udfff fine", "\x00"]}, {"text": 42}, {"texts": "no"}, [1, 2], {"text": ""}]


def hostile_plan(total: int, body_of, distinct: int = 120) -> list[tuple[bool, object]]:
    """``total`` requests, every tenth hostile: (hostile?, body); valid ones are ``body_of(headline)``, over
    ``distinct`` headlines."""
    headlines = [f"{title} {body}" for _, title, body in ag_news_rows(distinct, seed=11)]
    return [(True, HOSTILE_BODIES[i % len(HOSTILE_BODIES)]) if i % 10 == 3
            else (False, body_of(headlines[i % distinct])) for i in range(total)]

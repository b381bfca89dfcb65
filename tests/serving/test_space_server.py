"""The real Space under uvicorn on 127.0.0.1: HTTP, a bounded load test, a full queue, and a real browser.

The server loads its model by Hub repo id, pinned to a commit sha, from a real Hub-compatible server on
loopback (olah, tests/hub_mirror.py), exactly as the Space pulls from the Hub. The browser is Debian's headless Chromium
driven by Playwright (no ``playwright install``: its own browser download cannot work offline); the test
skips when /usr/bin/chromium or playwright is missing and saves a screenshot under test-artifacts/.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time

import httpx
import pytest

from conftest import ag_news_rows
from hub_mirror import HubMirror
from space_support import ARTIFACTS, CARD_TEST_ACCURACY, CHROMIUM, LABELS, demo_page, expect_given_line, \
    uvicorn_server, with_config, write_space_model

QUEUE_TEXTS = 65  # one full request (64) fits, and one window more


REPO_ID = "distrinews/ag-news-tiny"


@pytest.fixture(scope="module")
def hub_mirror(tmp_path_factory):
    with HubMirror(tmp_path_factory.mktemp("hub")) as mirror:
        yield mirror


@pytest.fixture(scope="module")
def pinned_commit(hub_mirror, tmp_path_factory) -> str:
    """The Space's model as a Hub repo on the mirror, its config holding a confidence floor no answer reaches
    (which the server's MIN_CONFIDENCE=0 turns off); the sha of the commit the server is pinned to."""
    folder = tmp_path_factory.mktemp("space-model")
    model = with_config(write_space_model(folder / "written"), folder / "floored", abstain_below=1.0)
    return hub_mirror.commit(REPO_ID, model, "Add the model")


@pytest.fixture(scope="module")
def space_model_id() -> str:
    return REPO_ID


@pytest.fixture(scope="module")
def server(hub_mirror, pinned_commit, space_model_id, tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    with uvicorn_server(space_model_id, folder / "onnx", folder / "uvicorn.log", QUANTIZE="auto",
                        MAX_QUEUE=str(QUEUE_TEXTS), MAX_TEXTS_PER_REQUEST="64", MODEL_REVISION=pinned_commit,
                        MIN_CONFIDENCE="0",
                        **hub_mirror.client_env(folder / "hf-home")) as base_url:
        yield base_url


def test_predict_and_info_over_http(server, space_model_id, pinned_commit):
    info = httpx.get(f"{server}/api/info").json()
    assert info["model_id"] == space_model_id and info["labels"] == LABELS
    assert info["revision"] == info["resolved_revision"] == pinned_commit  # pulled from the mirror at the pin
    assert info["test_metrics"][0]["value"] == CARD_TEST_ACCURACY
    # MIN_CONFIDENCE=0 turns the model's own floor off: nothing is abstained.
    assert (info["min_confidence"], info["min_confidence_source"], info["model_abstain_below"]) == \
        (None, "MIN_CONFIDENCE", 1.0)
    response = httpx.post(f"{server}/api/predict", json={"texts": ["Stocks rally", "Striker scores twice"]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [set(p["probabilities"]) for p in predictions] == [set(LABELS)] * 2
    assert all(not p["abstained"] and p["min_confidence"] is None and p["confidence"] == p["score"]
               for p in predictions), predictions
    assert httpx.post(f"{server}/api/predict", json={"text": "   "}).status_code == 422


def test_load_2000_requests_at_concurrency_32_all_answered_without_errors(server):
    texts = [f"{title} {body}" for _, title, body in ag_news_rows(200, seed=3)]
    total, concurrency = 2000, 32
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def client_loop(client: httpx.AsyncClient, worker: int) -> None:
        for i in range(worker, total, concurrency):
            started = time.perf_counter()
            response = await client.post("/api/predict", json={"text": texts[i % len(texts)]})
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                assert len(response.json()["predictions"]) == 1

    async def run() -> float:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=server, limits=limits, timeout=60) as client:
            started = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(client_loop(client, w) for w in range(concurrency))), 300)
            return time.perf_counter() - started

    elapsed = asyncio.run(run())
    cuts = statistics.quantiles(latencies, n=100)
    print(f"\nload test: {total} requests, concurrency {concurrency}: {total / elapsed:.0f} req/s, "
          f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms, statuses {statuses}")
    assert statuses == {200: total} and len(latencies) == total


def test_a_full_queue_answers_429_with_retry_after_and_every_request_gets_one_answer(server):
    """Half the flood through the JSON API, half through the HF inference route: one queue, one answer each."""
    texts = [f"{title} {body}" for _, title, body in ag_news_rows(64, seed=5)]

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=60,
                                     limits=httpx.Limits(max_connections=40)) as client:
            return await asyncio.gather(*(client.post("/api/predict", json={"texts": texts}) if i % 2 else
                                          client.post("/", json={"inputs": texts}) for i in range(40)))

    responses = asyncio.run(flood())
    codes = [r.status_code for r in responses]
    assert len(responses) == 40 and set(codes) <= {200, 429} and codes.count(200) >= 1 and 429 in codes, codes
    for i, response in enumerate(responses):
        hf_route = i % 2 == 0
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            body = response.json()
            message = body["error"] if hf_route else body["detail"]
            assert "server busy" in message and (not hf_route or body["error_type"] == "overloaded")
        else:
            assert len(response.json() if hf_route else response.json()["predictions"]) == 64
    assert 429 in codes[0::2] and 429 in codes[1::2], codes
    assert httpx.post(f"{server}/api/predict", json={"text": "still serving"}).status_code == 200


def test_an_idle_server_lets_the_cores_sleep(server):
    """Gradio's queue polls for UI events every 1 ms by default: an idle Space woke ~900 times a second (6.5% of a
    core, and a stall for any parallel inference step it lands on). The app slows the idle polling down."""
    import psutil

    port = server.rsplit(":", 1)[1]
    process = next(p for p in psutil.process_iter(["cmdline"])
                   if "app.app:app" in (p.info["cmdline"] or []) and port in (p.info["cmdline"] or []))
    assert httpx.get(server + "/").status_code == 200  # the UI side is up, as when someone has the page open
    time.sleep(1)
    before, started = process.num_ctx_switches().voluntary, time.monotonic()
    time.sleep(3)
    per_second = (process.num_ctx_switches().voluntary - before) / (time.monotonic() - started)
    assert per_second < 300, f"the idle server woke {per_second:.0f} times a second"


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)")
def test_a_person_in_a_browser_classifies_a_headline(server):
    ARTIFACTS.mkdir(exist_ok=True)
    with demo_page(server) as (sync_api, page):
        page.locator("#headline textarea").fill("Oil prices fall and stocks rally as the central bank holds rates")
        page.locator("#classify").click()
        top = page.locator("#topic [data-testid='label-output-value']")
        sync_api.expect(top).to_be_visible(timeout=30_000)
        assert top.inner_text().strip() in LABELS
        rows = page.locator("#topic [data-testid$='-confidence-set']")
        sync_api.expect(rows).to_have_count(4)
        shares = rows.locator("dd.confidence").all_inner_texts()
        assert len(shares) == 4 and all(share.strip().endswith("%") for share in shares), shares
        assert sorted(rows.locator("dt").all_inner_texts()) == sorted(LABELS)
        page.screenshot(path=str(ARTIFACTS / "space_classify.png"), full_page=True)
        # The line under the scores names the label the API gives for the same text, whatever that label is.
        for text, label in _texts_of_different_labels(server).items():
            expect_given_line(sync_api, page, text, f"Given: {label}")


HEADLINES = ["Oil prices fall and stocks rally as the central bank holds rates", "Striker scores twice as champions win",
             "NASA launches a telescope to study distant planets", "Leaders meet for peace talks after border clashes",
             "Profit warning sends shares lower", "Coach resigns after season of defeats", "New chip doubles battery life",
             "Election results delayed amid protests", "Merger creates the largest bank in Europe", "Tennis star retires",
             "Scientists sequence the genome of wheat", "Ceasefire holds in the capital", "quarterly earnings beat forecasts",
             "goal league match cup", "software update fixes security flaw", "minister visits refugee camp"]


def _texts_of_different_labels(server) -> dict[str, str]:
    """Up to four headlines the served model gives different labels, at least one of them not its first label
    (which is what a page reading no scores at all would show)."""
    answers = httpx.post(server + "/api/predict", json={"texts": HEADLINES}, timeout=60).json()["predictions"]
    chosen: dict[str, str] = {}
    for text, prediction in zip(HEADLINES, answers):
        if prediction["label"] not in chosen.values() and len(chosen) < 4:
            chosen[text] = prediction["label"]
    assert set(chosen.values()) - {LABELS[0]}, f"the test model gives {LABELS[0]} to every headline"
    return chosen



# ---------------------------------------------------------------- a multi-label model's own decisions

# Per-label thresholds as training saves them: the tiny model's sigmoid scores all sit just under 0.5, so the
# global 0.5 gives no label, World's own 0.3 and Business's own 0.45 give those two, and Sports' 0.6 and Sci/Tech's
# 0.5 do not.
OWN_THRESHOLDS = {"World": 0.3, "Sports": 0.6, "Business": 0.45, "Sci/Tech": 0.5}


@pytest.fixture(scope="module")
def multi_label_server(shipped_space_model, tmp_path_factory):
    """A multi-label copy of the model with its int8 graph (the path that reads only the config, no torch), whose
    config holds per-label thresholds and a confidence floor that MIN_CONFIDENCE replaces by a lower one."""
    folder = tmp_path_factory.mktemp("multi-label-server")
    model = with_config(shipped_space_model, folder / "model", problem_type="multi_label_classification",
                        decision_threshold=0.5, decision_thresholds=list(OWN_THRESHOLDS.values()), abstain_below=0.9)
    with uvicorn_server(str(model), folder / "onnx", folder / "uvicorn.log", QUANTIZE="int8",
                        MIN_CONFIDENCE="0.25") as base_url:
        yield base_url


def test_a_multi_label_model_gives_each_label_at_its_own_threshold_on_every_surface(multi_label_server):
    info = httpx.get(f"{multi_label_server}/api/info").json()
    assert (info["problem_type"], info["quantization"], info["threshold"]) == ("multi_label_classification",
                                                                               "int8", 0.5)
    assert info["thresholds"] == OWN_THRESHOLDS
    assert (info["min_confidence"], info["min_confidence_source"], info["model_abstain_below"]) == \
        (0.25, "MIN_CONFIDENCE", 0.9)
    texts = HEADLINES[:2]
    predictions = httpx.post(f"{multi_label_server}/api/predict", json={"texts": texts}).json()["predictions"]
    for prediction in predictions:
        scores = prediction["probabilities"]
        given = {name for name, score in scores.items() if score >= OWN_THRESHOLDS[name]}
        assert set(prediction["labels"]) == given == {"World", "Business"}, prediction
        assert scores["World"] < 0.5  # given under its own threshold; the global one would not give it
        sure = [scores[name] if name in given else 1 - scores[name] for name in LABELS]
        assert prediction["confidence"] == pytest.approx(min(sure), abs=1e-6)
        assert not prediction["abstained"] and prediction["min_confidence"] == 0.25  # MIN_CONFIDENCE, not 0.9
    hf = httpx.post(f"{multi_label_server}/", json={"inputs": texts})
    assert [len(ranked) for ranked in hf.json()] == [4, 4]
    assert (hf.headers["x-abstained"], hf.headers["x-min-confidence"]) == ("0,0", "0.25")
    if shutil.which(CHROMIUM):
        with demo_page(multi_label_server) as (sync_api, page):
            sync_api.expect(page.get_by_text("Sports 0.6")).to_be_visible()  # the summary lists each threshold
            for text, prediction in zip(texts, predictions):
                expect_given_line(sync_api, page, text, f"Given: {', '.join(prediction['labels'])}")

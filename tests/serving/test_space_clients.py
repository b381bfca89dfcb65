"""The clients people already use, against the real Space (``uvicorn app.app:app``) on 127.0.0.1, one server for
the module: huggingface_hub's ``InferenceClient``, huggingface.js run by Node, ``gradio_client``, a Prometheus
scrape parsed by the Prometheus client's own parser, and a page of another origin in headless Chromium calling
the API with ``fetch`` (CORS).

huggingface.js comes from the npm registry: the test runs ``npm ci`` in tests/serving/js when its node_modules is
missing or stale, and skips only where node or npm is not installed.
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import subprocess
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import ODD_TEXTS, free_port, shared_folder
from distrinews.core.texts import clean_text
from space_support import CHROMIUM, CHROMIUM_ARGS, LABELS, assert_same_scores, demo_page, expect_given_line, \
    hostile_plan, send_concurrently, uvicorn_server, with_config

JS_CLIENT = Path(__file__).parent / "js"
# What the clients send as Authorization, made afresh each run (no token-shaped string lives in the tree): it must
# echo nowhere.
TOKEN = "hf_" + secrets.token_hex(17)
TEXT = "Stocks rally as oil prices slide and the central bank holds rates"
# The model's config says to abstain under this confidence, which no answer reaches: every answer is "not sure".
FLOOR = 1.0


@pytest.fixture(scope="module")
def page_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def space(shipped_space_model, tmp_path_factory, page_port):
    """The Space with a CORS allow-list holding one origin, its demo files kept 1 s, its temp folders its own,
    and no GRADIO_ANALYTICS_ENABLED in its environment (the app must turn analytics off itself). Its model is the
    shipped one with a confidence floor in its config (``abstain_below``), which a blank MIN_CONFIDENCE keeps."""
    folder = tmp_path_factory.mktemp("clients-server")
    (folder / "tmp").mkdir()
    model = with_config(shipped_space_model, folder / "model", abstain_below=FLOOR)
    with uvicorn_server(str(model), folder / "onnx", folder / "uvicorn.log", QUANTIZE="int8",
                        MAX_BATCH_SIZE="24", BATCH_WAIT_MS="2", UI_FILES_TTL_S="1",
                        CORS_ALLOW_ORIGINS=f"http://127.0.0.1:{page_port}", GRADIO_TEMP_DIR=str(folder / "gradio"),
                        TMPDIR=str(folder / "tmp"), unset=("GRADIO_ANALYTICS_ENABLED", "MIN_CONFIDENCE")) as base_url:
        yield base_url, folder


def _api_probabilities(base_url: str, text: str) -> dict[str, float]:
    return httpx.post(f"{base_url}/api/predict", json={"text": text}).json()["predictions"][0]["probabilities"]


# ---------------------------------------------------------------- huggingface_hub

def test_inference_client_text_classification(space, monkeypatch):
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.errors import HfHubHTTPError

    base_url, folder = space
    # The suite runs offline (HF_HUB_OFFLINE=1, read once at import); this client only calls the loopback Space.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    client = InferenceClient(base_url=base_url, api_key=TOKEN)
    every = client.text_classification(TEXT)
    scores = {e.label: e.score for e in every}
    assert set(scores) == set(LABELS) and [e.score for e in every] == sorted(scores.values(), reverse=True)
    assert_same_scores(scores, _api_probabilities(base_url, TEXT))  # one predict path behind both doors
    top = client.text_classification(TEXT, top_k=2)
    assert [e.label for e in top] == [e.label for e in every[:2]]
    raw = {e.label: e.score for e in client.text_classification(TEXT, function_to_apply="none")}
    sigmoid = {e.label: e.score for e in client.text_classification(TEXT, function_to_apply="sigmoid")}
    assert all(sigmoid[label] == pytest.approx(1 / (1 + math.exp(-raw[label])), abs=1e-6) for label in LABELS)
    exp = {label: math.exp(value) for label, value in raw.items()}
    assert all(scores[label] == pytest.approx(exp[label] / sum(exp.values()), abs=1e-6) for label in LABELS)
    # Every odd text with something to classify that a client's JSON encoder writes (lone surrogates: the load
    # test below sends them as the escapes they are).
    for odd in (text for text in ODD_TEXTS if clean_text(text) and not any("\ud800" <= c <= "\udfff" for c in text)):
        assert {e.label for e in client.text_classification(odd)} == set(LABELS)
    with pytest.raises(HfHubHTTPError) as too_large:
        client.text_classification("news " * 60_000)
    assert too_large.value.response.status_code == 413 and "larger than" in str(too_large.value)
    with pytest.raises(HfHubHTTPError) as blank:
        client.text_classification(" \u200b ")
    assert blank.value.response.status_code == 422 and "empty or only whitespace" in str(blank.value)
    assert TOKEN not in (folder / "uvicorn.log").read_text()


def test_an_abstained_answer_keeps_every_label_and_says_so(space, monkeypatch):
    """Under the model's floor: /api/predict says abstained with the best guess and every probability; POST /
    keeps the HF label list and says it in X-Abstained, which an InferenceClient user reads off the response
    (a hook on huggingface_hub's shared HTTP session)."""
    from huggingface_hub import InferenceClient, constants, get_session

    base_url, _ = space
    info = httpx.get(f"{base_url}/api/info").json()
    assert (info["min_confidence"], info["min_confidence_source"]) == (FLOOR, "model config (abstain_below)")
    (answer,) = httpx.post(f"{base_url}/api/predict", json={"text": TEXT}).json()["predictions"]
    assert answer["abstained"] and answer["min_confidence"] == FLOOR and answer["confidence"] < FLOOR
    assert answer["label"] in LABELS and answer["labels"] == [answer["label"]] and set(answer["probabilities"]) == \
        set(LABELS)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    responses = []
    hooks = get_session().event_hooks["response"]  # the session outlives the test: the hook is removed below
    hooks.append(responses.append)
    try:
        every = InferenceClient(base_url=base_url).text_classification(TEXT)
    finally:
        hooks.remove(responses.append)
    assert {e.label for e in every} == set(LABELS)
    assert (responses[-1].headers["x-abstained"], responses[-1].headers["x-min-confidence"]) == ("1", repr(FLOOR))
    both = httpx.post(f"{base_url}/", json={"inputs": [TEXT, "Striker scores twice"]})
    assert both.headers["x-abstained"] == "1,1" and len(both.json()) == 2


def test_hostile_tenth_of_concurrent_traffic_on_the_hf_route_fails_no_valid_request(space):
    base_url, folder = space
    # 40 distinct headlines, so that checking each against its answer alone stays cheap.
    plan = hostile_plan(240, lambda text: {"inputs": text, "parameters": {"top_k": 4, "unknown": 1}}, distinct=40)
    plan = [(hostile, {"inputs": body["text"]} if hostile and isinstance(body, dict) and "text" in body else body)
            for hostile, body in plan]
    answers = send_concurrently(base_url + "/", [body for _, body in plan])
    statuses = sorted({(hostile, status) for (hostile, _), (status, _) in zip(plan, answers)})
    assert all(status < 500 for _, status in statuses), statuses
    assert all(status == 200 for (hostile, _), (status, _) in zip(plan, answers) if not hostile), statuses
    alone: dict[str, dict[str, float]] = {}
    for (hostile, body), (status, answer) in zip(plan, answers):
        if hostile and status != 200:
            assert set(answer) == {"error", "error_type"} and answer["error_type"] == "validation", answer
        elif not hostile:
            (ranked,) = answer
            text = body["inputs"]
            alone[text] = alone.get(text) or _api_probabilities(base_url, text)
            assert_same_scores({e["label"]: e["score"] for e in ranked}, alone[text])
    assert "inference failed" not in (folder / "uvicorn.log").read_text()


# ---------------------------------------------------------------- huggingface.js

@pytest.fixture(scope="module")
def node_client(tmp_path_factory):
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("needs node and npm (apt-get install nodejs npm) to run huggingface.js")

    def install(_: Path) -> None:  # once per session, whichever xdist worker asks first
        installed = JS_CLIENT / "node_modules" / "@huggingface" / "inference" / "package.json"
        wanted = json.loads((JS_CLIENT / "package.json").read_text())["dependencies"]["@huggingface/inference"]
        if not installed.is_file() or json.loads(installed.read_text())["version"] != wanted:
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_CLIENT, check=True, timeout=300,
                           capture_output=True)

    shared_folder(tmp_path_factory, "npm-ci", install)
    return node


def test_huggingface_js_text_classification(space, node_client):
    base_url, folder = space
    texts = [TEXT, "Striker scores twice as champions win the league", "NASA tests a new chip for satellites"]
    run = subprocess.run([node_client, "classify.mjs", base_url, TOKEN, *texts], cwd=JS_CLIENT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    for got, text in zip([answer["one"], *answer["each"]], [texts[0], *texts]):
        assert [e["score"] for e in got] == sorted((e["score"] for e in got), reverse=True)
        assert_same_scores({e["label"]: e["score"] for e in got}, _api_probabilities(base_url, text))
    # A request with a list of inputs answers one list per input; this client reads the first.
    assert [e["label"] for e in answer["listed"]] == [e["label"] for e in answer["one"]]
    assert answer["error"]["status"] == 422 and "empty or only whitespace" in answer["error"]["message"]
    assert TOKEN not in run.stdout + run.stderr + (folder / "uvicorn.log").read_text()


# ---------------------------------------------------------------- gradio_client and the demo's files

def test_gradio_client_sees_one_named_endpoint_per_action_and_calls_each(space, tmp_path):
    from gradio_client import Client

    base_url, folder = space
    client = Client(base_url, verbose=False, download_files=str(tmp_path))
    listing = client.view_api(print_info=False, return_format="dict")
    assert set(listing["named_endpoints"]) == {"/classify", "/classify_many", "/explain"}
    assert not listing["unnamed_endpoints"]
    label, given = client.predict(TEXT, api_name="/classify")
    assert {c["label"] for c in label["confidences"]} == set(LABELS)
    assert given.startswith("**Given:** not sure (confidence ") and f"floor of {FLOOR:.1%}" in given, given
    words, said = client.predict("nasa chip satellites", api_name="/explain")
    assert [w["token"].strip() for w in words] == ["nasa", "chip", "satellites"], words
    assert said.startswith("Read the whole text"), said
    for _ in range(3):
        table, csv_file = client.predict(f"{TEXT}\nStriker scores twice", None, api_name="/classify_many")
        assert [row[0] for row in table["value"]["data"]] == [TEXT, "Striker scores twice"], table
        abstained = table["value"]["headers"].index("abstained")
        assert [row[abstained] for row in table["value"]["data"]] == [True, True], table
        assert Path(csv_file).read_text(encoding="utf-8").startswith("text,label,score")
    # No copy in the temp folder, and the one in the Gradio cache goes after UI_FILES_TTL_S (1 s here).
    assert not list((folder / "tmp").glob("distrinews-*"))
    deadline = time.monotonic() + 20
    while list((folder / "gradio").rglob("predictions.csv")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not list((folder / "gradio").rglob("predictions.csv"))
    assert httpx.get(f"{base_url}/config").json()["analytics_enabled"] is False


# ---------------------------------------------------------------- /metrics

def _scrape(base_url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{base_url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def test_metrics_count_known_requests(space):
    base_url, folder = space
    before = _scrape(base_url)
    for _ in range(3):
        assert httpx.post(base_url + "/", json={"inputs": [TEXT, "Striker scores"]}).status_code == 200
    assert httpx.post(base_url + "/", json={"inputs": ""}).status_code == 422
    assert httpx.post(f"{base_url}/api/predict", json={"text": "merger " * 400}).status_code == 200  # 4 windows
    after = _scrape(base_url)

    def moved(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    requests = "distrinews_http_requests_total"
    assert moved(requests, method="POST", route="/", status="200") == 3
    assert moved(requests, method="POST", route="/", status="422") == 1
    assert moved(requests, method="POST", route="/api/predict", status="200") == 1
    assert moved("distrinews_http_request_duration_seconds_count", method="POST", route="/") == 4
    assert moved("distrinews_texts_classified_total") == 7
    assert moved("distrinews_batch_size_sum") == 10  # 3 x 2 headlines + 4 windows
    assert moved("distrinews_queue_wait_seconds_count") == 10
    assert after[("distrinews_queue_depth", ())] == 0 and after[("distrinews_model_ready", ())] == 1
    assert after[("distrinews_model_load_seconds", ())] > 0
    (info,) = [dict(labels) for name, labels in after if name == "distrinews_model_info"]
    assert info["model_id"] == str(folder / "model") and info["quantization"] == "int8"
    assert info["revision"].startswith("local:")


# ---------------------------------------------------------------- CORS, from a real browser

@pytest.fixture(scope="module")
def page_server(page_port, tmp_path_factory):
    """A web page served from 127.0.0.1:page_port: the same page is the allowed origin there, and another
    origin (not allowed) as localhost:page_port."""
    folder = tmp_path_factory.mktemp("page")
    (folder / "page.html").write_text("<!doctype html><title>another site</title><p>calls the Space</p>")
    server = ThreadingHTTPServer(("127.0.0.1", page_port), partial(SimpleHTTPRequestHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield page_port
    server.shutdown()
    thread.join(10)


CALL_BOTH_APIS = """async ([space, token]) => {
  const post = async (path, body, headers) => {
    try {
      const r = await fetch(space + path, {method: "POST", body: JSON.stringify(body),
                                           headers: {"content-type": "application/json", ...headers}});
      return {status: r.status, body: await r.json(), timing: r.headers.get("server-timing"),
              abstained: r.headers.get("x-abstained")};
    } catch (err) { return {blocked: String(err)}; }
  };
  return {api: await post("/api/predict", {text: "Stocks rally"}, {}),
          hf: await post("/", {inputs: "Stocks rally"}, {authorization: "Bearer " + token})};
}"""


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)")
def test_a_page_on_an_allowed_origin_calls_both_apis_and_another_origin_is_refused(space, page_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    base_url, _ = space
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{page_server}/page.html")
            allowed = page.evaluate(CALL_BOTH_APIS, [base_url, TOKEN])
            page.goto(f"http://localhost:{page_server}/page.html")
            refused = page.evaluate(CALL_BOTH_APIS, [base_url, TOKEN])
        finally:
            browser.close()
    assert allowed["api"]["status"] == 200 and allowed["api"]["body"]["predictions"][0]["label"] in LABELS
    assert allowed["api"]["timing"].startswith("queue;")  # an exposed header
    assert allowed["hf"]["status"] == 200 and {e["label"] for e in allowed["hf"]["body"][0]} == set(LABELS)
    assert allowed["hf"]["abstained"] == "1"  # exposed to the page, as the model's floor made it
    assert "Failed to fetch" in refused["api"]["blocked"] and "Failed to fetch" in refused["hf"]["blocked"]


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)")
def test_the_classify_tab_says_not_sure_with_the_floor_and_keeps_the_scores(space):
    base_url, _ = space
    (answer,) = httpx.post(f"{base_url}/api/predict", json={"text": TEXT}).json()["predictions"]
    with demo_page(base_url) as (sync_api, page):
        expect_given_line(sync_api, page, TEXT, f"Given: not sure (confidence {answer['confidence']:.1%} is under "
                                                f"the floor of {FLOOR:.1%}; best guess: {answer['label']})")
        sync_api.expect(page.locator("#topic [data-testid$='-confidence-set']")).to_have_count(len(LABELS))

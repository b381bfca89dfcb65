"""Every route of the Space has a limit, and no answer says anything private: the real app under uvicorn on
127.0.0.1 (h11, as the issue measured it), with its default limits.

- The demo's routes (Gradio's) are fronts with body limits: a call over its limit, and an upload of too many or
  too large files, are refused with 413 before Gradio reads them.
- A request needing more windows than MAX_WINDOWS_PER_REQUEST is refused with its count (413) on both API fronts.
- While one client sends the largest request a route accepts, /api/health and a headline keep answering within
  their latency at rest plus one batch's time.
- A load failure's text (a local path) and the backend's text of an inference failure are in the log, never in
  an answer; an invented HTTP method adds no metrics series.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

from distrinews.core.errors import RequestTooLarge
from distrinews.core.predict import encode_windows
from distrinews.serving.batching import MicroBatcher
from distrinews.serving.service import ClassifierService, ServingConfig
from distrinews.serving.web import create_app
from distrinews.serving.web.demo import Demo
from distrinews.serving.web.factory import UPLOAD_MAX_BYTES, demo_fronts
from distrinews.serving.web.metrics import METHODS, OTHER_METHOD
from distrinews.serving.web.state import ServingState
from space_support import uvicorn_in_thread, uvicorn_server

DEFAULTS = ServingConfig(model_id="the limits every Space starts with")
GRADIO_CALL_LIMIT = next(front.max_body_bytes for front in demo_fronts(DEFAULTS) if front.name == "gradio")
JSON = {"content-type": "application/json"}
HEADLINE = {"text": "Stocks rally as the central bank holds interest rates"}
# One mark of punctuation is one token: 1,600 of them fill 16 windows, the most a text is read in.
SIXTEEN_WINDOWS = "!" * 1600


@pytest.fixture(scope="module")
def server(shipped_space_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("limits-server")
    with uvicorn_server(str(shipped_space_model), folder / "onnx", folder / "uvicorn.log", QUANTIZE="int8",
                        http="h11", GRADIO_TEMP_DIR=str(folder / "gradio")) as base_url:
        yield base_url, folder


def utf8_json(body) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")  # as a browser sends it: 2 bytes a Cyrillic letter


def cyrillic_text(size_bytes: int) -> str:
    """News-like Cyrillic words and punctuation, ``size_bytes`` of UTF-8 (every letter goes through cleaning's
    slow path on a server that looks at each non-ASCII character)."""
    phrase = "Рынки растут, нефть дешевеет! "
    text = phrase * (size_bytes // len(phrase.encode()) + 1)
    return text.encode()[:size_bytes].decode(errors="ignore")


def gradio_call(client: httpx.Client, base_url: str, api_name: str, body: bytes) -> tuple[int, str]:
    """POST /gradio_api/call/<api_name>, then read its result stream: the POST's status and the last event."""
    posted = client.post(f"{base_url}/gradio_api/call/{api_name}", content=body, headers=JSON)
    if posted.status_code != 200:
        return posted.status_code, posted.text
    with client.stream("GET", f"{base_url}/gradio_api/call/{api_name}/{posted.json()['event_id']}") as stream:
        events = [line for line in stream.iter_lines() if line.startswith("event:")]
    return posted.status_code, events[-1]


# ---------------------------------------------------------------- every route has a limit

def test_every_demo_route_refuses_a_body_over_its_limit_before_gradio_reads_it(server):
    base_url, folder = server
    five_mb = utf8_json({"data": [cyrillic_text(5 * 1024 * 1024)]})
    csv = ("files", ("news.csv", b"text\nStocks rally\n", "text/csv"))
    with httpx.Client(timeout=60) as client:
        for path in ("/gradio_api/call/classify", "/gradio_api/queue/join", "/gradio_api/run/classify", "/elsewhere"):
            refused = client.post(base_url + path, content=five_mb, headers=JSON)
            assert refused.status_code == 413 and "MAX_TEXT_CHARS" in refused.json()["detail"], (path, refused.text)
        chunks = (five_mb[start:start + 65536] for start in range(0, len(five_mb), 65536))  # no Content-Length
        assert client.post(f"{base_url}/gradio_api/call/classify", content=chunks, headers=JSON).status_code == 413
        files_before = set((folder / "gradio").rglob("*.csv"))
        for files, why in (([csv] * 2, "2 files in one upload; at most 1"), ([csv] * 1000, "1000 files"),
                           ([("files", ("big.csv", b"x" * (UPLOAD_MAX_BYTES + 1), "text/csv"))], "larger than")):
            refused = client.post(f"{base_url}/gradio_api/upload", files=files)
            assert refused.status_code == 413 and why in refused.json()["detail"], refused.text
        assert set((folder / "gradio").rglob("*.csv")) == files_before  # Gradio wrote none of them
        accepted = client.post(f"{base_url}/gradio_api/upload", files=[csv])
        assert accepted.status_code == 200 and len(accepted.json()) == 1


def test_a_request_over_the_window_budget_is_refused_with_its_count_on_both_apis(server):
    base_url, _ = server
    texts = [SIXTEEN_WINDOWS] * DEFAULTS.max_texts_per_request  # 1,024 windows (MAX_QUEUE) in a 102 KB body
    predict = httpx.post(f"{base_url}/api/predict", json={"texts": texts}, timeout=60)
    assert predict.status_code == 413, predict.text[:300]
    assert "1024 windows" in predict.json()["detail"] and "at most 256 per request (MAX_WINDOWS_PER_REQUEST)" in \
        predict.json()["detail"]
    hf = httpx.post(f"{base_url}/", json={"inputs": texts}, timeout=60)
    assert hf.status_code == 413 and hf.json()["error_type"] == "payload_too_large" and "1024 windows" in \
        hf.json()["error"]
    info = httpx.get(f"{base_url}/api/info").json()  # what a client sizes its requests by
    assert (info["max_windows_per_request"], info["max_text_chars"]) == (256, DEFAULTS.max_text_chars)
    at_budget = httpx.post(f"{base_url}/api/predict", json={"texts": texts[:16]}, timeout=60)
    assert at_budget.status_code == 200 and [p["windows"] for p in at_budget.json()["predictions"]] == [16] * 16


def test_texts_are_cut_to_max_text_chars_and_requests_held_to_their_window_budget(shipped_space_model, tmp_path):
    config = ServingConfig(model_id=str(shipped_space_model), quantize="int8", onnx_cache_dir=str(tmp_path / "onnx"),
                           max_text_chars=2000, max_windows_per_request=20)
    service = ClassifierService.load(config)
    whole, cut = "stocks rally " * 150, "\x00stocks rally " * 200  # 1,950 and 2,800 characters

    async def scenario():
        await service.start()
        try:
            counts = await service.count_windows([whole, cut, SIXTEEN_WINDOWS])
            predictions = await service.predict([whole, cut])
            refusals = []
            for texts, limit in (([SIXTEEN_WINDOWS] * 2, None), ([SIXTEEN_WINDOWS], 8)):
                with pytest.raises(RequestTooLarge) as refused:
                    await service.predict(texts, max_windows=limit)
                refusals.append((refused.value.windows, refused.value.limit))
            return counts, predictions, refusals, await service.predict([SIXTEEN_WINDOWS])
        finally:
            await service.stop()

    counts, predictions, refusals, at_budget = asyncio.run(scenario())
    assert counts[2] == 16 and counts[:2] == [p.windows for p in predictions]
    assert counts[1] == len(encode_windows(service.encoder, [cut[:2000]], service.policy)[0].windows)
    assert [p.truncated for p in predictions] == [False, True]  # the second was cut, though all of it fit windows
    assert refusals == [(32, 20), (16, 8)] and at_budget[0].windows == 16


# ---------------------------------------------------------------- the largest requests stall nobody

def _probe(client: httpx.Client, base_url: str, seconds: float) -> dict[str, list[float]]:
    """Latencies of /api/health and of a headline on /api/predict, alternately, for ``seconds``."""
    latencies: dict[str, list[float]] = {"health": [], "headline": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for kind, send in (("health", lambda: client.get(f"{base_url}/api/health")),
                           ("headline", lambda: client.post(f"{base_url}/api/predict", json=HEADLINE))):
            started = time.perf_counter()
            assert send().status_code == 200
            latencies[kind].append(time.perf_counter() - started)
        time.sleep(0.005)
    return latencies


def _while_sending(send, probe) -> dict[str, list[float]]:
    """``probe()`` while another client sends ``send()`` again and again."""
    done = threading.Event()

    def keep_sending():
        while not done.is_set():
            send()

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        return probe()
    finally:
        done.set()
        sender.join(60)


def _p99(values: list[float]) -> float:
    return sorted(values)[int(0.99 * (len(values) - 1))]


def _worst_of_rounds(measure, rounds: int = 3) -> dict[str, float]:
    """The median over ``rounds`` of each kind's worst latency in ``measure()``: a stall the server causes shows in
    every round, a scheduling hiccup of a loaded machine in one."""
    worst = [{kind: max(values) for kind, values in measure().items()} for _ in range(rounds)]
    return {kind: sorted(w[kind] for w in worst)[rounds // 2] for kind in worst[0]}


def test_the_largest_request_of_each_route_leaves_health_and_headlines_answering(server):
    base_url, _ = server
    # The window budget (16 texts of 16 windows) in nearly MAX_BODY_BYTES; the largest demo call in nearly its limit.
    api_body = utf8_json({"texts": [cyrillic_text(DEFAULTS.max_body_bytes // 16 - 100)] * 16})
    gradio_body = utf8_json({"data": [cyrillic_text(GRADIO_CALL_LIMIT - 100)]})
    batch_s = [0.0]
    with httpx.Client(timeout=60) as heavy, httpx.Client(timeout=60) as prober:
        def send_api():
            answer = heavy.post(f"{base_url}/api/predict", content=api_body, headers=JSON)
            assert answer.status_code == 200 and [p["windows"] for p in answer.json()["predictions"]] == [16] * 16
            timings = answer.headers["server-timing"].split(",")
            batch = next(part for part in timings if part.strip().startswith("batch"))
            batch_s[0] = max(batch_s[0], float(batch.split("dur=")[1].split(";")[0]) / 1000)

        def send_gradio():
            assert gradio_call(heavy, base_url, "classify", gradio_body) == (200, "event: complete")

        send_api(), send_gradio()  # warm: Gradio imports what its first event needs
        rest = {kind: _p99(values) for kind, values in _probe(prober, base_url, 1.0).items()}
        for route, send in (("/api/predict", send_api), ("/gradio_api/call/classify", send_gradio)):
            busy = _worst_of_rounds(lambda: _while_sending(send, lambda: _probe(prober, base_url, 0.6)))
            # Health waits for nothing but the event loop; a headline waits for a lane to finish its batch, then
            # runs in a full one. Plus a margin for a loaded machine.
            bounds = {"health": rest["health"] + batch_s[0] + 0.03,
                      "headline": rest["headline"] + 2 * batch_s[0] + 0.03}
            print(f"while {route} runs: worst health {busy['health'] * 1000:.1f} ms, headline "
                  f"{busy['headline'] * 1000:.1f} ms (p99 at rest {rest['health'] * 1000:.1f} and "
                  f"{rest['headline'] * 1000:.1f} ms, a batch {batch_s[0] * 1000:.1f} ms)")
            for kind, bound in bounds.items():
                assert busy[kind] <= bound, (route, kind, busy[kind], bound)


# ---------------------------------------------------------------- nothing private in an answer

def test_an_invented_http_method_adds_no_metrics_series(server):
    base_url, _ = server
    host, port = base_url.removeprefix("http://").split(":")
    for method in (b"BREW", b"PROPFIND", b"X-SCAN-1", b"X-SCAN-2"):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"%s /api/health HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n" % (method, host.encode()))
            assert sock.recv(64).startswith(b"HTTP/1.1 4")  # answered (and counted), not dropped by the parser
    scrape = httpx.get(f"{base_url}/metrics").text
    methods = {line.split('method="')[1].split('"')[0] for line in scrape.splitlines()
               if line.startswith("distrinews_http_requests_total{")}
    assert OTHER_METHOD in methods and methods <= METHODS | {OTHER_METHOD}, methods


def test_a_load_failure_is_logged_and_answered_without_its_text(tmp_path):
    import gradio as gr

    model = tmp_path / "private-models" / "no-weights-here"
    model.mkdir(parents=True)
    with uvicorn_server(str(model), tmp_path / "onnx", tmp_path / "uvicorn.log", QUANTIZE="none",
                        failing=True) as base_url:
        answers = [httpx.get(f"{base_url}/api/ready"), httpx.get(f"{base_url}/api/info"),
                   httpx.post(f"{base_url}/api/predict", json=HEADLINE), httpx.post(base_url, json={"inputs": "hi"})]
    for answer in answers:
        assert answer.status_code == 503 and "failed to load" in answer.text, answer.text
        assert "private-models" not in answer.text and "safetensors" not in answer.text, answer.text
    assert "private-models/no-weights-here" in (tmp_path / "uvicorn.log").read_text()
    state = ServingState(ServingConfig(model_id=str(model), quantize="none", onnx_cache_dir=str(tmp_path / "onnx")))
    asyncio.run(state.load())
    demo = Demo(state)  # the page's header and every tab's error
    assert "failed to load" in demo.model_summary() and "private-models" not in demo.model_summary()
    with pytest.raises(gr.Error) as refused:
        demo.service()
    assert "private-models" not in str(refused.value)


def test_an_inference_failure_answers_a_generic_500_and_logs_the_backends_text(shipped_space_model, tmp_path,
                                                                                 caplog):
    from gradio_client import Client

    config = ServingConfig(model_id=str(shipped_space_model), quantize="int8", onnx_cache_dir=str(tmp_path / "onnx"))
    service = ClassifierService.load(config)
    poison = encode_windows(service.encoder, ["東京"], service.policy)[0].windows[0]
    private = "/srv/private/model.onnx: node 17 failed"

    def failing_backend(windows):  # the fault: a backend that fails on one text's window, even alone
        if poison in windows:
            raise RuntimeError(private)
        return service._window_logits(windows)

    service.batcher = MicroBatcher(failing_backend, max_queue=config.max_queue, size_of=len)
    with uvicorn_in_thread(create_app(config, service=service)) as base_url:
        for path, body in (("/api/predict", {"texts": ["stocks rally", "東京"]}),
                           ("/", {"inputs": ["stocks rally", "東京"]})):
            answer = httpx.post(base_url + path, json=body, timeout=60)
            assert answer.status_code == 500 and "texts [1]" in answer.text and private not in answer.text, answer.text
        with pytest.raises(Exception) as shown:
            Client(base_url, verbose=False).predict("東京", api_name="/classify")
        assert "failed on this text" in str(shown.value) and private not in str(shown.value)
    assert private in caplog.text


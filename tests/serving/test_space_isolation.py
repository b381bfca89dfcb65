"""One client's odd text never fails another's request: any string JSON can carry, over the JSON API and a
real server under hostile concurrent load; connections survive error answers.

The strategies draw from every Unicode code point, lone surrogates included (hypothesis' default text strategy
leaves them out, which is how a surrogate that failed whole batches went unnoticed). Bodies are sent as the
JSON bytes a client would send: ``json.dumps`` writes a lone surrogate as the escape ``\\ud800``.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ANY_TEXT
from distrinews.core.texts import clean_text
from distrinews.serving.service import ServingConfig
from distrinews.serving.web import create_app
from distrinews.serving.web.demo import Demo
from distrinews.serving.web.errors import ContainErrors
from space_support import LABELS, assert_same_scores, hostile_plan, raw_json, send_concurrently, space_env, \
    uvicorn_in_thread, uvicorn_server


# ---------------------------------------------------------------- the JSON API, in process

@pytest.fixture(scope="module")
def client(shipped_space_model, tmp_path_factory):
    config = ServingConfig.from_env(space_env(str(shipped_space_model), tmp_path_factory.mktemp("onnx"),
                                              QUANTIZE="int8", MAX_TEXTS_PER_REQUEST="8"))
    with TestClient(create_app(config), raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 120
        while test_client.get("/api/ready").status_code != 200:
            assert time.monotonic() < deadline, test_client.get("/api/ready").text
            time.sleep(0.05)
        yield test_client


def _post(client, body):
    return client.post("/api/predict", content=raw_json(body), headers={"content-type": "application/json"})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT, others=st.lists(ANY_TEXT, min_size=1, max_size=8))
def test_any_string_is_classified_or_refused_with_a_422_naming_it(client, text, others):
    one = _post(client, {"text": text})
    if clean_text(text):
        assert one.status_code == 200, one.text
        assert one.json()["predictions"][0]["label"] in LABELS
    else:
        assert one.status_code == 422 and '"text" is empty or only whitespace' in one.json()["detail"]
    many = _post(client, {"texts": others})
    blank = [i for i, t in enumerate(others) if not clean_text(t)]
    if blank:
        assert many.status_code == 422 and f"items {blank[:10]} are empty" in many.json()["detail"], many.text
    else:
        assert many.status_code == 200 and len(many.json()["predictions"]) == len(others), many.text


def test_a_surrogate_anywhere_in_the_body_gets_a_4xx_never_a_500(client):
    for body in ({"\ud800": 1}, {"text": "ok", "\udfff": "x"}, {"texts": ["ok", {"\ud800": []}]}, {"text": ["\ud800"]}):
        response = _post(client, body)
        assert response.status_code == 422, (body, response.text)
        response.content.decode("utf-8")
    assert _post(client, {"text": "\ud800"}).status_code == 200
    assert _post(client, {"texts": ["ok", "\udfff fine"]}).status_code == 200


def test_the_response_says_where_the_time_went(client):
    response = _post(client, {"text": "stocks rally as the bank holds rates"})
    stages = dict(part.strip().split(";", 1)[0:2] for part in response.headers["server-timing"].split(","))
    assert set(stages) == {"queue", "batch", "respond", "handler"}
    durations = {name: float(value.split("dur=")[1].split(";")[0]) for name, value in stages.items()}
    assert 0 < durations["batch"] <= durations["handler"]


# ---------------------------------------------------------------- a real server, hostile load, keep-alive

@pytest.fixture(scope="module")
def server(shipped_space_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("isolation-server")
    with uvicorn_server(str(shipped_space_model), folder / "onnx", folder / "uvicorn.log", QUANTIZE="int8",
                        MAX_BATCH_SIZE="24", BATCH_WAIT_MS="2") as base_url:
        yield base_url, folder / "uvicorn.log"


def test_hostile_tenth_of_concurrent_traffic_fails_no_valid_request(server):
    base_url, log_path = server
    plan = hostile_plan(600, lambda text: {"text": text})
    answers = send_concurrently(f"{base_url}/api/predict", [body for _, body in plan])
    statuses = {}
    for (hostile, body), (status, _) in zip(plan, answers):
        statuses[(hostile, status)] = statuses.get((hostile, status), 0) + 1
    assert not any(status >= 500 for _, status in statuses), statuses
    valid = [(body["text"], answer[1]) for (hostile, body), answer in zip(plan, answers) if not hostile]
    assert all(answer["predictions"] for _, answer in valid), statuses
    # What each text gets when sent alone, to an idle server (assert_same_scores says how close that is).
    alone = {}
    with KeepAliveConnection(base_url) as connection:
        for text in {text for text, _ in valid}:
            alone[text] = connection.post({"text": text})["predictions"][0]["probabilities"]
    for text, answer in valid:
        assert_same_scores(answer["predictions"][0]["probabilities"], alone[text])
    assert "inference failed" not in log_path.read_text()
    print(f"hostile load: {len(plan)} requests, statuses (hostile?, status): {statuses}")


class KeepAliveConnection:
    """One keep-alive HTTP/1.1 connection over a plain socket (what the keep-alive tests need to see)."""

    def __init__(self, base_url: str):
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.reader = self.sock.makefile("rb")
        self.host = f"{host}:{port}".encode()

    def __enter__(self) -> "KeepAliveConnection":
        return self

    def __exit__(self, *exc):
        self.reader.close()
        self.sock.close()

    def send(self, method: bytes, path: bytes, body: bytes = b"") -> tuple[int, bytes]:
        self.sock.sendall(b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (method, path, self.host, len(body), body))
        status = int(self.reader.readline().split()[1])
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, self.reader.read(length)

    def post(self, body) -> dict:
        status, reply = self.send(b"POST", b"/api/predict", raw_json(body))
        assert status == 200, reply
        return json.loads(reply)


def test_a_keep_alive_connection_survives_4xx_answers(server):
    base_url, _ = server
    with KeepAliveConnection(base_url) as connection:
        for body in (b'{"text": ""}', b'{"text": 1}', b"not json", b'{"texts": ["\\u200b"]}', b'{"text": "\\ud800"}'):
            status, reply = connection.send(b"POST", b"/api/predict", body)
            assert status in (200, 422), (body, status, reply)
        assert connection.send(b"GET", b"/api/nothing-here")[0] == 404
        assert connection.post({"text": "stocks rally"})["predictions"][0]["label"] in LABELS  # same socket


def test_an_unexpected_error_is_a_json_500_and_the_connection_stays_open():
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/api/predict")
    async def broken():
        raise RuntimeError("a bug")

    @app.get("/ok")
    async def ok():
        return {"fine": True}

    app.add_middleware(ContainErrors)
    with uvicorn_in_thread(app) as base_url, KeepAliveConnection(base_url) as connection:
        status, reply = connection.send(b"POST", b"/api/predict", b"{}")
        assert status == 500 and json.loads(reply) == {"detail": "internal server error (logged)"}
        assert connection.send(b"GET", b"/ok") == (200, b'{"fine":true}')


def test_the_demo_tabs_take_any_text_and_any_upload(client, tmp_path):
    import gradio as gr

    demo = Demo(client.app.state.serving)
    demo.cache_dir = tmp_path / "gradio-cache"
    classify, classify_many, explain = demo.classify, demo.classify_many, demo.explain

    async def scenario():
        scores, given = await classify("\ud800 stocks \x00 rally")
        assert set(scores) == set(LABELS) and given.startswith("**Given:** ")
        highlighted, said = await explain("\u202enasa\u202c \ud83d chip \x1b")
        words = [word for word, _ in highlighted]
        assert "".join(words).encode("utf-8") and words == ["nasa \ufffd ", "chip"] and "Read the whole" in said
        for blank in ("", "\u200b\ufeff", "\x00\x01"):
            for tab in (classify, explain):
                with pytest.raises(gr.Error, match="Type a headline first"):
                    await tab(blank)
        table, download = await classify_many("ok \ud800\n\u200b\nstocks\x00rally", None)
        assert [row[0] for row in table["value"]] == ["ok \ufffd", "stocks rally"]
        Path(download).read_text(encoding="utf-8")
        bad_csv = tmp_path / "bad.csv"
        bad_csv.write_bytes(b"text\n" + b"x" * 200_000 + b"\n")  # one field over the csv module's limit
        with pytest.raises(gr.Error, match="Cannot read the file: line"):
            await classify_many("", str(bad_csv))
        bad_csv.write_bytes(b"text\n\xff\xfe broken\n")
        with pytest.raises(gr.Error, match="not UTF-8"):
            await classify_many("", str(bad_csv))

    client.portal.call(scenario)

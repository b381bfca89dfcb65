"""The Space's JSON API through FastAPI's TestClient (as a context manager, so the lifespan loads the model and
the Gradio queue starts), with a tiny model built here, on both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st

from distrinews.serving.backends import resolve_quantization
from distrinews.core.modeling import load_classifier
from distrinews.core.predict import predict_texts
from distrinews.core.errors import ServingConfigError
from distrinews.serving.service import ServingConfig
from distrinews.serving.web import create_app
from distrinews.serving.web.json_api import PredictResponse
from conftest import REPO_ROOT
from space_support import CARD_TEST_ACCURACY, LABELS, space_env


def _client(model, cache_dir, **settings):
    return TestClient(create_app(ServingConfig.from_env(space_env(str(model), cache_dir, **settings))),
                      raise_server_exceptions=False)


def _wait_ready(client: TestClient, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/api/ready")
        if response.status_code == 200:
            return
        assert response.json()["status"] == "loading", response.text
        time.sleep(0.05)
    raise AssertionError("model not ready in time")


@pytest.fixture(scope="module", params=["none", "int8"])
def client(request, space_model, tmp_path_factory):
    with _client(space_model, tmp_path_factory.mktemp("onnx"), QUANTIZE=request.param,
                 MAX_TEXTS_PER_REQUEST="8", MAX_BODY_BYTES="4096") as test_client:
        _wait_ready(test_client)
        yield test_client


def test_predict_one_and_many_match_the_package_predict_path(client, space_model):
    info = client.get("/api/info").json()
    assert info["labels"] == LABELS and info["model_id"] == str(space_model)
    assert info["resolved_revision"].startswith("local:") and info["version"]
    assert info["test_metrics"] == [{"name": "accuracy", "value": CARD_TEST_ACCURACY, "dataset": "AG News",
                                     "split": "test"}]
    texts = ["shares profit investors", "coach league striker playoff season", "nasa"]
    one = client.post("/api/predict", json={"text": texts[0]})
    many = client.post("/api/predict", json={"texts": texts})
    assert one.status_code == many.status_code == 200, (one.text, many.text)
    body = many.json()
    assert many.headers["content-type"] == "application/json"
    assert PredictResponse.model_validate(body).model_dump() == body  # exactly the documented schema
    assert body["quantization"] == info["quantization"] and body["revision"] == info["resolved_revision"]
    assert [len(p["probabilities"]) for p in body["predictions"]] == [4, 4, 4]
    model, tokenizer = load_classifier(str(space_model))
    reference = predict_texts(model, tokenizer, texts, max_length=128)
    # int8 moves probabilities a little; fp32 must agree with the package's own path exactly.
    tolerance = 1e-5 if info["quantization"] == "none" else 5e-3
    for got, want in zip(body["predictions"], reference):
        assert set(got["probabilities"]) == set(LABELS)
        assert abs(sum(got["probabilities"].values()) - 1) < 1e-4
        for name in LABELS:
            assert got["probabilities"][name] == pytest.approx(want.probabilities[name], abs=tolerance)
        assert got["score"] == max(got["probabilities"].values()) and got["truncated"] is False
        assert got["windows"] == 1
    # Dynamic int8 scales activations per batch, so a text alone and in a batch differ slightly there.
    assert one.json()["predictions"][0]["probabilities"] == pytest.approx(
        body["predictions"][0]["probabilities"], abs=tolerance)


def test_a_long_text_is_read_in_windows_and_one_past_them_is_flagged_truncated(client):
    # 400 tokens: windows of 128 (126 between [CLS] and [SEP]) sharing 32 start 94 tokens apart: 4 windows.
    response = client.post("/api/predict", json={"texts": ["merger " * 400, "short one"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(p["windows"], p["truncated"]) for p in body["predictions"]] == [(4, False), (1, False)]
    assert body["max_length"] == 128 and body["max_windows"] == 16 and not body["warnings"]
    beyond = client.post("/api/predict", json={"texts": ["short one", "a " * 1800]}).json()  # 16 windows: 1,536
    assert [(p["windows"], p["truncated"]) for p in beyond["predictions"]] == [(1, False), (16, True)]
    assert "texts [1] were longer than 16 windows of 128 tokens" in beyond["warnings"][0]


@pytest.mark.parametrize("body, status, message", [
    ({"text": ""}, 422, "empty or only whitespace"),
    ({"text": " \n\t "}, 422, "empty or only whitespace"),
    ({"texts": ["fine", "  "]}, 422, "items [1] are empty"),
    ({"texts": []}, 422, "empty list"),
    ({}, 422, "exactly one of"),
    ({"text": "a", "texts": ["b"]}, 422, "exactly one of"),
    ({"text": 42}, 422, "body.text: Input should be a valid string"),
    ({"texts": "not a list"}, 422, "body.texts"),
    ({"texts": ["ok", 3]}, 422, "body.texts.1"),
    ({"text": "ok", "extra": 1}, 422, "body.extra: Extra inputs are not permitted"),
    ([1, 2], 422, "must be a JSON object"),
    ({"texts": ["news"] * 9}, 422, "at most 8 per request"),
], ids=lambda value: json.dumps(value)[:40] if not isinstance(value, int) else str(value))
def test_bad_requests_get_a_4xx_that_says_what_was_wrong(client, body, status, message):
    response = client.post("/api/predict", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_invalid_json_oversized_body_and_wrong_content_type_are_4xx(client):
    broken = client.post("/api/predict", content=b'{"text": "unterminated', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "not valid JSON" in broken.json()["detail"]
    huge = client.post("/api/predict", content=json.dumps({"text": "x" * 5000}),
                       headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "larger than 4096 bytes" in huge.json()["detail"]
    for literal in (b'{"text": NaN}', b'{"texts": [Infinity]}', b'\xff\xfe', b'{"text": "a"} trailing'):
        odd = client.post("/api/predict", content=literal, headers={"content-type": "application/json"})
        assert odd.status_code == 422, (literal, odd.text)
    form = client.post("/api/predict", content=b"text=hello", headers={"content-type": "text/plain"})
    assert 400 <= form.status_code < 500
    assert 400 <= client.get("/api/predict").status_code < 500  # the Gradio mount at / answers 404


def test_health_ready_docs_and_the_gradio_page(client):
    assert client.get("/api/health").json() == {"status": "ok", "detail": None}
    assert client.get("/api/ready").json()["status"] == "ready"
    schema = client.get("/openapi.json").json()
    assert {"PredictRequest", "PredictResponse", "InfoResponse"} <= set(schema["components"]["schemas"])
    page = client.get("/")
    assert page.status_code == 200 and "gradio" in page.text.lower()


def test_a_model_that_cannot_load_reports_503_and_logs_the_reason(tmp_path, caplog):
    (tmp_path / "empty-model").mkdir()
    with _client(tmp_path / "empty-model", tmp_path / "onnx", QUANTIZE="none") as client:
        deadline = time.monotonic() + 60
        while (ready := client.get("/api/ready")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "failed to load" in ready.json()["detail"] and "empty-model" not in ready.text  # a local path
        predict = client.post("/api/predict", json={"text": "hello"})
        assert predict.status_code == 503 and "failed to load" in predict.json()["detail"]
        assert "empty-model" not in predict.text
        assert client.get("/api/health").status_code == 200
    assert "empty-model" in caplog.text and "safetensors" in caplog.text


def test_quantize_auto_picks_a_backend_and_reports_it(space_model, tmp_path):
    with _client(space_model, tmp_path / "onnx", QUANTIZE="auto") as client:
        _wait_ready(client)
        assert client.get("/api/info").json()["quantization"] == resolve_quantization("auto")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
request_like = st.fixed_dictionaries({}, optional={"text": json_values | st.text(max_size=200),
                                                   "texts": st.lists(st.text(max_size=60), max_size=10) | json_values,
                                                   "other": json_values})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=request_like | json_values, raw=st.binary(max_size=64))
def test_fuzzed_request_bodies_never_get_a_5xx(client, body, raw):
    response = client.post("/api/predict", json=body)
    assert response.status_code in (200, 413, 422), (body, response.status_code, response.text)
    if response.status_code == 200:
        # A null field counts as absent (as for any optional JSON field), so {"text": null, "texts": [...]}
        # is a batch request.
        single = body.get("text") is not None
        assert len(response.json()["predictions"]) == (1 if single else len(body["texts"]))
    garbage = client.post("/api/predict", content=raw, headers={"content-type": "application/json"})
    assert 400 <= garbage.status_code < 500 or garbage.status_code == 200, (raw, garbage.text)


# ---------------------------------------------------------------- the Hugging Face inference route, in process

def test_the_hf_route_answers_one_sorted_list_per_input_through_the_same_predict_path(client):
    texts = ["shares profit investors", "coach league striker playoff season"]
    hf = client.post("/", json={"inputs": texts, "parameters": {}, "options": {"wait_for_model": True}})
    api = client.post("/api/predict", json={"texts": texts}).json()["predictions"]
    assert hf.status_code == 200 and hf.headers["x-windows"] == "1,1", hf.text
    for ranked, prediction in zip(hf.json(), api):
        assert [e["score"] for e in ranked] == sorted((e["score"] for e in ranked), reverse=True)
        assert {e["label"]: e["score"] for e in ranked} == pytest.approx(prediction["probabilities"], abs=5e-3)
    one = client.post("/", json={"inputs": texts[0], "parameters": {"top_k": 9, "whatever": [1]}}).json()
    assert len(one) == 1 and len(one[0]) == 4  # top_k above the label count: every label


@pytest.mark.parametrize("body, status, message", [
    ({"inputs": ""}, 422, '"inputs" is empty or only whitespace'),
    ({"inputs": ["fine", "\u200b"]}, 422, '"inputs" items [1] are empty'),
    ({"inputs": []}, 422, '"inputs" is an empty list'),
    ({}, 422, "body.inputs: Field required"),
    ({"inputs": 3}, 422, "body.inputs"),
    ({"inputs": "a", "parameters": {"top_k": 0}}, 422, "body.parameters.top_k: Input should be greater than"),
    ({"inputs": "a", "parameters": {"top_k": True}}, 422, "body.parameters.top_k"),
    ({"inputs": "a", "parameters": {"function_to_apply": "relu"}}, 422, "body.parameters.function_to_apply"),
    ({"inputs": "a", "parameters": "top_k=1"}, 422, "body.parameters"),
    ({"inputs": ["news"] * 9}, 422, '"inputs" has 9 items; at most 8 per request'),
    ({"inputs": "x" * 5000}, 413, "larger than 4096 bytes"),
], ids=lambda value: json.dumps(value)[:40] if not isinstance(value, int) else str(value))
def test_bad_hf_requests_get_the_hf_error_shape_and_the_api_statuses(client, body, status, message):
    response = client.post("/", json=body, headers={"authorization": "Bearer hf_NotReadNotEchoed"})
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "error_type"} and message in response.json()["error"]
    assert response.json()["error_type"] == {422: "validation", 413: "payload_too_large"}[status]
    assert "hf_NotReadNotEchoed" not in response.text


def test_cors_lets_any_origin_call_both_apis_by_default_and_leaves_the_page_alone(client):
    origin = {"origin": "https://example.org"}
    for path in ("/api/predict", "/"):
        preflight = client.options(path, headers={**origin, "access-control-request-method": "POST",
                                                  "access-control-request-headers": "authorization,content-type"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        assert "access-control-allow-credentials" not in preflight.headers
    answer = client.post("/api/predict", json={"text": "stocks"}, headers=origin)
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "server-timing" in answer.headers["access-control-expose-headers"].lower()
    # The demo's own paths keep Gradio's CORS rules (which echo the origin): ours are only on the two APIs.
    assert "access-control-expose-headers" not in client.get("/", headers=origin).headers


def test_a_model_that_cannot_load_answers_the_hf_route_with_503_unhealthy(tmp_path):
    (tmp_path / "empty-model").mkdir()
    with _client(tmp_path / "empty-model", tmp_path / "onnx", QUANTIZE="none") as client:
        deadline = time.monotonic() + 60
        while client.get("/api/ready").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        response = client.post("/", json={"inputs": "hello"})
        assert response.status_code == 503 and response.json()["error_type"] == "unhealthy"
        assert "failed to load" in response.json()["error"] and response.headers["retry-after"] == "5"


@pytest.mark.parametrize("quantize, lanes", [("int8", 2), ("none", 1)])
def test_lanes_answer_concurrent_requests_as_one_session_does(space_model, tmp_path, quantize, lanes):
    """Two int8 lanes (one thread each) serve concurrent requests with the predictions of the one-lane server;
    fp32 torch asked for two lanes keeps one (its threads are the process's)."""
    texts = [f"{word} " * (1 + i % 7) + "shares league nasa" for i, word in enumerate(["profit", "coach"] * 12)]

    def served(**settings):
        with _client(space_model, tmp_path / "onnx", QUANTIZE=quantize, INFERENCE_THREADS="2", **settings) as c:
            _wait_ready(c)
            with ThreadPoolExecutor(8) as pool:
                replies = list(pool.map(lambda text: c.post("/api/predict", json={"text": text}), texts))
            assert [r.status_code for r in replies] == [200] * len(texts)
            info = c.get("/api/info").json()
            # A lone request takes every core's session or a lane's, timed at start; one lane has only the first.
            assert info["lone_request_threads"] in ({1, 2} if info["lanes"] == 2 else {2})
            return info["lanes"], [r.json()["predictions"][0] for r in replies]

    (one, reference), (several, predictions) = served(INFERENCE_LANES="1"), served(INFERENCE_LANES="2")
    assert (one, several) == (1, lanes)
    for got, want in zip(predictions, reference):  # int8 scales activations per batch: batches differ a little
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=5e-3)


def test_serving_settings_are_checked_up_front():
    with pytest.raises(ServingConfigError, match="INFERENCE_LANES=-1: must be >= 0"):
        ServingConfig(model_id="m", lanes=-1)
    with pytest.raises(ServingConfigError, match="CORS_ALLOW_ORIGINS='https://ok.org,example.org/path'"):
        ServingConfig(model_id="m", cors_allow_origins="https://ok.org,example.org/path")
    with pytest.raises(ServingConfigError, match="MAX_WINDOWS=0: must be >= 1"):
        ServingConfig(model_id="m", max_windows=0)
    assert ServingConfig.from_env({"MODEL_ID": "m", "CORS_ALLOW_ORIGINS": ""}).cors_origins == []  # none
    assert ServingConfig.from_env({"MODEL_ID": "m", "MAX_WINDOWS": " "}).max_windows == 16  # blank: the default
    assert ServingConfig.from_env({"MODEL_ID": "m"}).cors_origins == ["*"]
    for bad, said in (("1.5", "1.5"), ("-0.1", "-0.1"), ("nan", "nan"), ("inf", "inf")):
        with pytest.raises(ServingConfigError, match=f"MIN_CONFIDENCE={said}: must be a number in \\[0, 1\\]"):
            ServingConfig.from_env({"MODEL_ID": "m", "MIN_CONFIDENCE": bad})
    with pytest.raises(ServingConfigError, match="MIN_CONFIDENCE='sure': expected a number"):
        ServingConfig.from_env({"MODEL_ID": "m", "MIN_CONFIDENCE": "sure"})
    with pytest.raises(ServingConfigError, match="MIN_CONFIDENCE=True"):
        ServingConfig(model_id="m", min_confidence=True)
    assert ServingConfig.from_env({"MODEL_ID": "m", "MIN_CONFIDENCE": " "}).min_confidence is None  # the model's
    assert ServingConfig.from_env({"MODEL_ID": "m", "MIN_CONFIDENCE": "0"}).min_confidence == 0  # none at all


def test_the_space_will_not_start_with_a_bad_min_confidence(tmp_path):
    """The Space's own entry point, as uvicorn imports it: one line naming the variable, before any model loads."""
    env = {**os.environ, **space_env("unused/model", tmp_path / "onnx", MIN_CONFIDENCE="2"),
           "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run([sys.executable, "-c", "import app.app"], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: MIN_CONFIDENCE=2.0: must be a number in [0, 1]")

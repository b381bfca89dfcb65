"""The DistriNews Space: a FastAPI app with the Gradio demo mounted at ``/`` and a JSON API under ``/api``.

    MODEL_ID=USER/NAME uvicorn app.app:app --port 7860            # from the repository root
    MODEL_ID=runs/ag_news/model QUANTIZE=none uvicorn app.app:app  # a local folder, fp32 torch
    curl -s localhost:7860/api/predict -H 'content-type: application/json' -d '{"text": "Stocks rally"}'

Settings come from the environment (``distrinews.serving.service.ServingConfig``: MODEL_ID, MODEL_REVISION,
QUANTIZE, MAX_BATCH_SIZE, BATCH_WAIT_MS, MAX_QUEUE, ...). The model is loaded and warmed in the background as the
server starts (``/api/ready`` answers 503 until it is done), so the port is up at once for the Space's
health check. No model logic lives here: loading, prediction, batching and explanation are the package's.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from distrinews.core.errors import ServingConfigError
from distrinews.serving.service import ClassifierService, ServingConfig, texts_from_csv


def _start_loading_early() -> tuple[ServingConfig, Future] | None:
    """Load the model in a thread while the web stack below imports. Importing Gradio is ~4 s of Python holding
    the GIL; loading is mostly ONNX Runtime and hashing, which release it, so on 2 cores a waking Space is ready
    about one load time (~1.5 s) sooner. The lifespan takes the result if its settings are the same."""
    try:
        config = ServingConfig.from_env()
    except ServingConfigError:
        return None  # the lifespan reports it
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-model")
    future = executor.submit(ClassifierService.load, config)
    executor.shutdown(wait=False)
    return config, future


_early_load = _start_loading_early()

import gradio as gr  # noqa: E402 - after the model load has started, see above
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from distrinews import __version__  # noqa: E402
from distrinews.core.errors import InferenceFailed, QueueFull, TextError  # noqa: E402
from distrinews.core.texts import clean_text  # noqa: E402

log = logging.getLogger("distrinews.app")

NOTHING_TO_CLASSIFY = "empty or only whitespace, control or invisible characters"
BATCH_TAB_LIMIT = 2000  # texts per upload in the Batch tab
GRADIO_IDLE_POLL_S = 0.02
EXAMPLES = [  # one headline per class
    "Rebels and government sign ceasefire as UN envoy arrives in the capital",
    "Striker scores twice as champions win the league title on the final day",
    "Oil prices fall and stocks rally after the central bank holds interest rates",
    "NASA researchers test new chip that speeds up wireless internet for satellites",
]


# ---------------------------------------------------------------- request / response models (shown in /docs)

class PredictRequest(BaseModel):
    """One text (``text``) or several (``texts``), never both."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": EXAMPLES[2]},
                                                                            {"texts": EXAMPLES[:2]}]})
    text: StrictStr | None = Field(None, description="A headline or short news text.")
    texts: list[StrictStr] | None = Field(None, description="Several texts, classified together.")

    @model_validator(mode="after")
    def _exactly_one_with_something_to_classify(self) -> "PredictRequest":
        # Every string JSON can carry gets here (lone surrogates, NUL, bidi marks...): each is cleaned now
        # (distrinews.core.texts), before it can share a batch with anyone else's text, and one with nothing left
        # is refused by name.
        if (self.text is None) == (self.texts is None):
            raise ValueError('send exactly one of "text" (a string) or "texts" (a list of strings)')
        if self.text is not None and not clean_text(self.text):
            raise ValueError(f'"text" is {NOTHING_TO_CLASSIFY}')
        if self.texts is not None:
            if not self.texts:
                raise ValueError('"texts" is an empty list')
            blank = [i for i, text in enumerate(self.texts) if not clean_text(text)]
            if blank:
                raise ValueError(f'"texts" items {blank[:10]} are {NOTHING_TO_CLASSIFY}')
        return self

    def as_list(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts)


class TextPrediction(BaseModel):
    label: str = Field(description="The most likely label.")
    score: float = Field(description="Probability of that label.")
    labels: list[str] = Field(description="The labels the model gives: the most likely one, or for a multi-label "
                                          "model every label at or above its threshold (possibly none).")
    probabilities: dict[str, float] = Field(description="Probability of every label (multi-label: each label's "
                                                        "own, so they need not sum to 1).")
    truncated: bool = Field(description="The text was longer than max_length tokens; only its start was read.")


class PredictResponse(BaseModel):
    predictions: list[TextPrediction]
    model_id: str
    revision: str
    quantization: str
    max_length: int = Field(description="Tokens read per text.")
    warnings: list[str] = Field(default_factory=list, description="E.g. which texts were truncated.")


class CardMetric(BaseModel):
    name: str
    value: float
    dataset: str | None = None
    split: str | None = None


class InfoResponse(BaseModel):
    model_id: str
    revision: str | None = Field(description="The revision asked for (MODEL_REVISION), if any.")
    resolved_revision: str = Field(description="The commit sha loaded (local:<hash> for a folder).")
    labels: list[str]
    problem_type: str = Field(description="single_label_classification or multi_label_classification.")
    threshold: float | None = Field(description="Multi-label: the probability at which a label is given.")
    test_metrics: list[CardMetric] = Field(description="From the model card's model-index; empty if none.")
    quantization: str
    max_length: int
    max_texts_per_request: int
    max_batch_size: int
    load_seconds: float
    version: str


class Status(BaseModel):
    status: str
    detail: str | None = None


class ErrorResponse(BaseModel):
    detail: str


# ---------------------------------------------------------------- state and lifespan

class ServingState:
    """What the routes see: the config, and the service once it has loaded (or the error that stopped it)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.config: ServingConfig | None = None
        self.service: ClassifierService | None = None
        self.error: str | None = None

    def require_service(self) -> ClassifierService:
        if self.service is None:
            raise StarletteHTTPException(503, self.error or "the model is still loading; retry shortly",
                                         headers={"Retry-After": "5"})
        return self.service


state = ServingState()


def _take_early_load(config: ServingConfig) -> Future | None:
    """The load started at import, once, if it was for these settings (tests start apps with other ones)."""
    global _early_load
    early, _early_load = _early_load, None
    return early[1] if early is not None and early[0] == config else None


async def _load(config: ServingConfig) -> None:
    try:
        early = _take_early_load(config)
        service = await (asyncio.wrap_future(early) if early is not None
                         else asyncio.to_thread(ClassifierService.load, config))
        await service.start()
        state.service = service
    except Exception as err:  # noqa: BLE001 - reported by /api/ready and every request; the process stays up
        log.exception("loading %s failed", config.model_id)
        state.error = f"model {config.model_id!r} failed to load: {err}"


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI):
    state.reset()
    state.config = ServingConfig.from_env()
    loading = asyncio.create_task(_load(state.config), name="load-model")
    try:
        yield
    finally:
        if not loading.done():
            loading.cancel()
        with contextlib.suppress(BaseException):
            await loading
        if state.service is not None:
            await state.service.stop()


api = FastAPI(title="DistriNews", version=__version__, lifespan=lifespan, docs_url="/api/docs",
              openapi_url="/openapi.json", description="A text classifier (the labels: GET /api/info). The demo UI "
                                                       "is at /.")


class BodySizeLimit:
    """Refuse /api request bodies over ``max_bytes`` with 413, whether or not Content-Length is sent.

    Pure ASGI (no BaseHTTPMiddleware), and reading at most max_bytes + one chunk, so a huge body never sits in
    memory. The limit is read when the first request arrives, after the lifespan has read the config."""

    def __init__(self, app, prefix: str = "/api"):
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix) or state.config is None:
            return await self.app(scope, receive, send)
        limit = state.config.max_body_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._too_large(send, limit)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await self._too_large(send, limit)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(send, limit: int) -> None:
        body = json.dumps({"detail": f"request body larger than {limit} bytes (MAX_BODY_BYTES)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


api.add_middleware(BodySizeLimit)


@api.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    # One readable line per problem, e.g. "body.texts.2: Input should be a valid string"; pydantic's raw
    # errors may hold the offending bytes or exception objects, which are not JSON, so they are rebuilt.
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            where, message = "body", f"not valid JSON: {error.get('ctx', {}).get('error', message)}"
        elif error.get("loc") == ("body",) and error.get("type") in ("model_attributes_type", "dict_type"):
            message = 'must be a JSON object like {"text": "..."} or {"texts": ["...", "..."]}'
        problems.append(f"{where}: {message}" if where else message)
    return JSONResponse({"detail": _printable("; ".join(problems) or "invalid request")}, status_code=422)


@api.exception_handler(QueueFull)
async def _queue_full(_: Request, exc: QueueFull) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after_s)})


@api.exception_handler(TextError)
async def _nothing_to_classify(_: Request, exc: TextError) -> JSONResponse:
    return JSONResponse({"detail": _printable(str(exc))}, status_code=422)


@api.exception_handler(InferenceFailed)
async def _inference_failed(_: Request, exc: InferenceFailed) -> JSONResponse:
    # A bug (every cleaned text should classify), kept to the request whose texts caused it: the batcher already
    # reran its batch one text at a time, so the others who shared it got their answers; answered here, not
    # raised, so the server keeps this client's connection open.
    return JSONResponse({"detail": _printable(str(exc))}, status_code=500)


class ContainErrors:
    """Any exception a route lets through becomes a logged JSON 500 here instead of reaching the server.

    Starlette's outermost error middleware re-raises after sending its 500, and uvicorn then closes the
    connection, so a keep-alive client lost its connection along with the one request that failed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:  # noqa: BLE001 - logged with its traceback; the client gets a 500
            log.exception("unhandled error in %s %s", scope.get("method"), _printable(scope.get("path", "")))
            if started:
                raise  # half a response is out: only closing the connection ends it cleanly
            await JSONResponse({"detail": "internal server error (logged)"}, status_code=500)(scope, receive, send)


api.add_middleware(ContainErrors)


def _printable(text: str) -> str:
    """``text`` safe to encode as UTF-8 (a lone surrogate from a request would fail the error response too)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# ---------------------------------------------------------------- JSON API

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (413, 422, 429, 503)}


@api.post("/api/predict", response_model=PredictResponse, responses=ERRORS)
async def predict(request: PredictRequest) -> Response:
    """Classify one text or a list of texts: the top label and every class probability, per text.

    The ``Server-Timing`` header says where the time went, in ms: waiting for a batch (``queue``), the batch's
    tokenization and model call (``batch``, with its size), building the response (``respond``), and the whole
    handler (``handler``; parsing and validating the body come before it)."""
    started = time.perf_counter()
    service = state.require_service()
    texts = request.as_list()
    if len(texts) > service.config.max_texts_per_request:
        raise StarletteHTTPException(422, f'"texts" has {len(texts)} items; at most '
                                          f'{service.config.max_texts_per_request} per request (MAX_TEXTS_PER_REQUEST)')
    timing: dict[str, float] = {}
    predictions = await service.predict(texts, timing)
    responding = time.perf_counter()
    truncated = [i for i, p in enumerate(predictions) if p.truncated]
    warnings = [f"texts {truncated[:20]} were longer than {service.max_length} tokens; only their start was read"
                ] if truncated else []
    response = PredictResponse(predictions=[TextPrediction(**p.to_dict()) for p in predictions],
                               model_id=service.config.model_id, revision=service.resolved_revision,
                               quantization=service.quantization, max_length=service.max_length, warnings=warnings)
    # Serialized here: returning the model would make FastAPI validate and serialize it a second time, 0.2 ms
    # of a ~13 ms int8 request on this machine. response_model above still documents it in /docs.
    body = response.model_dump_json()
    finished = time.perf_counter()
    stages = (f"queue;dur={timing['queue'] * 1000:.3f}, batch;dur={timing['batch'] * 1000:.3f};"
              f'desc="{timing["batch_size"]} texts", respond;dur={(finished - responding) * 1000:.3f}, '
              f"handler;dur={(finished - started) * 1000:.3f}")
    return Response(body, media_type="application/json", headers={"Server-Timing": stages})


@api.get("/api/health", response_model=Status)
async def health() -> Status:
    """The process is up (the model may still be loading: see /api/ready)."""
    return Status(status="ok")


@api.get("/api/ready", response_model=Status, responses={503: {"model": Status}})
async def ready():
    """200 once the model is loaded and warm; 503 while loading or if loading failed (detail says why)."""
    if state.service is not None:
        return Status(status="ready")
    status = "failed" if state.error else "loading"
    return JSONResponse(Status(status=status, detail=state.error).model_dump(), status_code=503,
                        headers={"Retry-After": "5"})


@api.get("/api/info", response_model=InfoResponse, responses={503: {"model": ErrorResponse}})
async def info() -> InfoResponse:
    """Model id, resolved revision, labels, test metrics from the model card, quantization, version."""
    return InfoResponse(**state.require_service().info())


# ---------------------------------------------------------------- Gradio demo (presentation only)

def _service_or_error() -> ClassifierService:
    if state.service is None:
        raise gr.Error(state.error or "The model is still loading; try again in a few seconds.")
    return state.service


def _model_summary() -> str:
    if state.service is None:
        return f"**Model:** {state.error or 'loading…'}"
    info = state.service.info()
    accuracy = state.service.test_accuracy()
    accuracy_text = f"{accuracy:.2%}" if accuracy is not None else "not in the model card"
    threshold = f", labels given at probability >= {info['threshold']:g}" if info["threshold"] is not None else ""
    return (f"**Model:** `{info['model_id']}` · **revision** `{info['resolved_revision'][:12]}` · "
            f"**test accuracy** {accuracy_text} · **backend** {info['quantization']}\n\n"
            f"**Labels** ({info['problem_type'].replace('_', ' ')}{threshold}): {', '.join(info['labels'])}")


async def classify(text: str) -> dict[str, float]:
    (prediction,) = await _demo_call(lambda service: service.predict([_typed_text(text)]))
    return prediction.probabilities


def given_labels(scores: dict | None) -> str:
    """The labels the model gives for the scores shown: the most likely, or every one at or above the threshold."""
    if state.service is None or not scores:
        return ""
    task = state.service.task
    confidence = {c["label"]: c["confidence"] for c in scores.get("confidences") or []}
    given = [task.labels[i] for i in task.chosen([confidence.get(name, 0.0) for name in task.labels])]
    return f"**Given:** {', '.join(given) or 'no label (none reaches the threshold)'}"


async def explain(text: str) -> list[tuple[str, float | None]]:
    explanation = await _demo_call(lambda service: service.explain(_typed_text(text)))
    return explanation.highlighted()


async def classify_many(lines: str, upload: str | None):
    try:
        texts = texts_from_csv(upload, BATCH_TAB_LIMIT) if upload else [
            t for t in (lines or "").splitlines() if clean_text(t)]
    except (ValueError, OSError) as err:
        raise gr.Error(f"Cannot read the file: {_printable(str(err))}") from None
    if not texts:
        raise gr.Error("Paste one text per line, or upload a CSV.")
    if len(texts) > BATCH_TAB_LIMIT:
        raise gr.Error(f"{len(texts)} texts; at most {BATCH_TAB_LIMIT} at once.")
    texts = [clean_text(text) for text in texts]  # what the model reads, and safe to show and to save as UTF-8

    async def predict_in_pieces(service: ClassifierService):
        # Request-sized pieces, one after another, so a big upload shares the queue with API callers.
        step = service.config.max_texts_per_request
        return [p for start in range(0, len(texts), step) for p in await service.predict(texts[start:start + step])]

    predictions = await _demo_call(predict_in_pieces)
    labels = state.service.labels
    header = ["text", "label", "score", "labels", *labels, "truncated"]
    rows = [[text, p.label, round(p.score, 4), "; ".join(p.labels),
             *(round(p.probabilities[name], 4) for name in labels), p.truncated] for text, p in zip(texts, predictions)]
    with tempfile.NamedTemporaryFile("w", suffix=".csv", prefix="distrinews-", delete=False, newline="",
                                     encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])
    return gr.update(value=rows, headers=header), handle.name


def _typed_text(text: str | None) -> str:
    if not text or not clean_text(text):
        raise gr.Error("Type a headline first.")
    return text


async def _demo_call(call):
    """``await call(service)``, with every way it can fail shown to the visitor as a message, not a crash."""
    try:
        return await call(_service_or_error())
    except (QueueFull, TextError, InferenceFailed) as err:
        raise gr.Error(_printable(str(err))) from None


with gr.Blocks(title="DistriNews: news topic classifier") as demo:
    gr.Markdown("# DistriNews\nClassify a text with the model below: its labels and the probability of each.")
    summary = gr.Markdown("**Model:** loading…")
    with gr.Tab("Classify"):
        with gr.Row():
            with gr.Column():
                headline = gr.Textbox(label="Headline", lines=3, placeholder="Paste a news headline…",
                                      elem_id="headline")
                run = gr.Button("Classify", variant="primary", elem_id="classify")
                gr.Examples(EXAMPLES, inputs=headline)
            with gr.Column():
                # Every label: a multi-label model may give any number of them.
                label = gr.Label(label="Scores", elem_id="topic")
                given = gr.Markdown(elem_id="given")
        run.click(classify, headline, label, api_name="classify").then(given_labels, label, given,
                                                                       api_visibility="private")
        headline.submit(classify, headline, label).then(given_labels, label, given, api_visibility="private")
    with gr.Tab("Batch"):
        lines = gr.Textbox(label="One text per line", lines=8)
        upload = gr.File(label="…or a CSV (a 'text' column, or AG News class,title,description rows)",
                         file_types=[".csv"], type="filepath")
        run_many = gr.Button("Classify all", variant="primary")
        table = gr.Dataframe(label="Predictions", interactive=False, wrap=True)
        download = gr.File(label="Download as CSV")
        run_many.click(classify_many, [lines, upload], [table, download], api_name="classify_many")
    with gr.Tab("Explain"):
        gr.Markdown("Which words pushed the prediction? Each word is left out in turn (one batch of "
                    "variants); red words pushed towards the predicted topic, purple ones away from it.")
        explain_text = gr.Textbox(label="Headline", lines=3, value=EXAMPLES[3])
        run_explain = gr.Button("Explain", variant="primary")
        explain_label = gr.Label(num_top_classes=4, label="Topic")
        highlighted = gr.HighlightedText(label="Word influence", combine_adjacent=False, show_legend=True)
        run_explain.click(classify, explain_text, explain_label).then(explain, explain_text, highlighted,
                                                                       api_name="explain")
    demo.load(_model_summary, None, summary)

app = gr.mount_gradio_app(api, demo, path="/", max_file_size="5mb", footer_links=["api"])

# Gradio's queue looks for new UI events every 1 ms, and for progress updates every 10 ms, while it has none
# (Queue.sleep_when_free, progress_update_sleep_when_free): an idle Space woke ~900 times a second and used
# 6.5% of a core doing it (2.0% and ~140 wake-ups after this), and on 2 cores each wake-up can stall a parallel
# inference step. 20-50 ms between looks is invisible to a person clicking a button; the JSON API never goes
# through this queue.
_queue = getattr(demo, "_queue", None)
if hasattr(_queue, "sleep_when_free") and hasattr(_queue, "progress_update_sleep_when_free"):
    _queue.sleep_when_free, _queue.progress_update_sleep_when_free = GRADIO_IDLE_POLL_S, 0.05

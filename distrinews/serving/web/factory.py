"""``create_app``: the Space's web app from a ``ServingConfig``, one classify use case behind two protocols.

    app = create_app(ServingConfig.from_env())                     # what app/app.py serves
    app = create_app(config, service=ClassifierService.load(config))  # an already loaded model

Routes, in the order they are matched: the JSON API under ``/api`` (``json_api``), the Hugging Face inference
protocol at ``POST /`` (``hf_api``), ``GET /metrics`` (``metrics``), then the Gradio demo mounted at ``/``
(``demo``), which keeps ``GET /`` and everything else. Around them, outermost first: errors that escape become
a JSON 500 without closing the connection, every request is counted and timed, CORS (``CORS_ALLOW_ORIGINS``) for
the two API fronts, and each front's body-size limit. Each front (``errors.Front``) names its own limits and
error body, so the errors are mapped in one place; the demo's paths are fronts too (``demo_fronts``), so every
route has a body limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Future

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from ... import __version__
from ..service import ClassifierService, ServingConfig
from .errors import BodySizeLimit, ContainErrors, Front, detail_body, front_for, hf_inference_body, \
    install_error_handlers
from .hf_api import HF_INFERENCE_PATH, hf_inference_router
from .json_api import json_api_router
from .metrics import CountRequests, ServingMetrics
from .state import ServingState

API_PREFIX = "/api"
# Gradio's queue looks for new UI events every 1 ms, and for progress updates every 10 ms, while it has none
# (Queue.sleep_when_free, progress_update_sleep_when_free): an idle Space woke ~900 times a second and used
# 6.5% of a core doing it (2.0% and ~140 wake-ups after this), and on 2 cores each wake-up can stall a parallel
# inference step. 20-50 ms between looks is invisible to a person clicking a button; the API never goes
# through this queue.
GRADIO_IDLE_POLL_S = 0.02
GRADIO_PROGRESS_POLL_S = 0.05
# The demo's limits. One upload is one CSV for the Batch tab, in a body of at most UPLOAD_MAX_BYTES; Gradio's own
# file size limit is the same, so a file ours lets through never reaches Gradio's. Any other demo request carries
# at most one text the service reads (MAX_TEXT_CHARS), each character taking at most 6 bytes of JSON (a \uXXXX
# escape), plus the event's other fields.
GRADIO_UPLOAD_PATH = "/gradio_api/upload"
UPLOAD_MAX_BYTES = 5 * 1024 * 1024
UPLOAD_MAX_FILES = 1
JSON_BYTES_PER_CHAR = 6
GRADIO_EVENT_BYTES = 64 * 1024
GRADIO_QUEUE_SIZE = 64  # demo events waiting at once; past it Gradio tells the visitor the queue is full


def api_fronts(config: ServingConfig) -> list[Front]:
    """The JSON API (first: its error body is the default) and the HF inference protocol, with their limits."""
    def is_json_api(scope) -> bool:
        return scope["path"] == API_PREFIX or scope["path"].startswith(API_PREFIX + "/")

    def is_hf_inference(scope) -> bool:  # GET / is the demo page
        return scope["path"] == HF_INFERENCE_PATH and scope.get("method") in ("POST", "OPTIONS")

    return [Front("json-api", is_json_api, config.max_body_bytes, detail_body, max_texts=config.max_texts_per_request),
            Front("hf-inference", is_hf_inference, config.max_body_bytes, hf_inference_body,
                  max_texts=config.max_texts_per_request)]


def demo_fronts(config: ServingConfig) -> list[Front]:
    """Gradio's uploads, and every other path (the demo's calls, its queue, and any path no route has), so that
    no request reaches Gradio with a body of any size. Matched after ``api_fronts``."""
    def is_upload(scope) -> bool:
        return scope["path"].rstrip("/") == GRADIO_UPLOAD_PATH

    call_limit = config.max_text_chars * JSON_BYTES_PER_CHAR + GRADIO_EVENT_BYTES
    return [Front("gradio-upload", is_upload, UPLOAD_MAX_BYTES, detail_body, body_limit_source="one CSV per upload",
                  max_files=UPLOAD_MAX_FILES),
            Front("gradio", lambda scope: True, call_limit, detail_body,
                  body_limit_source=f"MAX_TEXT_CHARS={config.max_text_chars} characters of JSON")]


# What a page on another origin may read of an API answer (a browser hides any other header from its script).
EXPOSED_HEADERS = ["Retry-After", "Server-Timing", "X-Windows", "X-Abstained", "X-Min-Confidence"]


class ApiCors:
    """CORS (Starlette's) for the API fronts only: the demo's own paths keep Gradio's rules."""

    def __init__(self, app, fronts: list[Front], origins: list[str]):
        self.app = app
        self.fronts = fronts
        # Any header may be sent (huggingface.js adds Authorization and, outside browsers, User-Agent); no
        # credentials, so "*" stays a plain wildcard, as text-embeddings-inference's --cors-allow-origin.
        self.cors = CORSMiddleware(app, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"],
                                   allow_credentials=False, expose_headers=EXPOSED_HEADERS, max_age=600)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and front_for(self.fronts, scope) is not None:
            return await self.cors(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(config: ServingConfig, service: ClassifierService | None = None, *,
               loading: Future | None = None) -> FastAPI:
    """The app for ``config``: it serves ``service`` if given, else the result of ``loading`` (a load started
    earlier, e.g. while the web stack imported), else loads the model in the background as the server starts
    (``/api/ready`` answers 503 until it is warm, so the port is up at once for a health check)."""
    state = ServingState(config, service)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        task = asyncio.create_task(state.load(loading), name="load-model")
        try:
            yield
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await state.stop()

    api = FastAPI(title="DistriNews", version=__version__, lifespan=lifespan, docs_url="/api/docs",
                  openapi_url="/openapi.json", description="A text classifier (its labels: GET /api/info): a JSON API "
                  "under /api, the Hugging Face inference protocol at POST /, Prometheus "
                  "metrics at /metrics. The demo UI is at /.")
    api.state.serving = state
    fronts = api_fronts(config)
    install_error_handlers(api, fronts)
    routers = [json_api_router(state, fronts[0]), hf_inference_router(state, fronts[1])]
    metrics = ServingMetrics(state, routes={route.path for router in routers for route in router.routes} |
                             {"/metrics", api.docs_url, api.openapi_url})
    for router in [*routers, metrics.router()]:
        api.include_router(router)
    api.add_middleware(BodySizeLimit, fronts=fronts + demo_fronts(config))
    if config.cors_origins:
        api.add_middleware(ApiCors, fronts=fronts, origins=config.cors_origins)
    api.add_middleware(CountRequests, metrics=metrics)
    api.add_middleware(ContainErrors)
    return _with_demo(api, state, config)


def _with_demo(api: FastAPI, state: ServingState, config: ServingConfig) -> FastAPI:
    import gradio as gr

    from .demo import build_demo

    blocks = build_demo(state, config.ui_files_ttl_s).queue(max_size=GRADIO_QUEUE_SIZE)
    app = gr.mount_gradio_app(api, blocks, path="/", max_file_size=UPLOAD_MAX_BYTES, footer_links=["api"])
    queue = getattr(blocks, "_queue", None)
    if hasattr(queue, "sleep_when_free") and hasattr(queue, "progress_update_sleep_when_free"):
        queue.sleep_when_free, queue.progress_update_sleep_when_free = GRADIO_IDLE_POLL_S, GRADIO_PROGRESS_POLL_S
    return app

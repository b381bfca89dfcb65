"""Errors and limits of every route, in one place: every failure becomes an ``ApiError`` (status, public message,
type, headers, and the private detail that only the log gets) here, and each protocol only says how its error body
looks.

The JSON API answers ``{"detail": "..."}`` (FastAPI's shape); the Hugging Face inference route answers
``{"error": "...", "error_type": "..."}`` (text-embeddings-inference's shape, which huggingface_hub and
huggingface.js read). Both use the same status codes: 422 bad input, 413 too large, 429 queue full (with
``Retry-After``), 503 not ready, 500 a bug kept to one request. The demo's routes (Gradio's) are fronts too, with
their own body limits, so no route of the Space reads a body of any size.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...core.errors import InferenceFailed, QueueFull, RequestTooLarge, TextError

log = logging.getLogger("distrinews.app")

ERROR_TYPES = {400: "validation", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "validation", 422: "validation", 429: "overloaded", 500: "backend", 503: "unhealthy"}


@dataclass(eq=False)  # compared and hashed by identity, as exceptions are
class ApiError(Exception):
    """What a failed API request is answered with, whichever protocol it came in by. ``message`` is public: it
    never holds a local path or a backend's or the Hub's own text; that goes in ``logged``, which only the
    server's log gets."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    logged: str | None = None

    @property
    def error_type(self) -> str:
        return ERROR_TYPES.get(self.status, "error")


def printable(text: str) -> str:
    """``text`` safe to encode as UTF-8 (a lone surrogate from a request would fail the error response too)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def api_error_for(exc: BaseException) -> ApiError | None:
    """The answer for an exception a route raised, or None for one that is a bug (a logged 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFull):
        return ApiError(429, str(exc), {"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, TextError):
        return ApiError(422, printable(str(exc)))
    if isinstance(exc, RequestTooLarge):
        return ApiError(413, str(exc))
    if isinstance(exc, InferenceFailed):
        # A bug (every cleaned text should classify), kept to the request whose texts caused it: the batcher
        # already reran its batch one window at a time, so the others who shared it got their answers.
        return ApiError(500, str(exc), logged=f"{type(exc.error).__name__}: {exc.error}")
    if isinstance(exc, RequestValidationError):
        return ApiError(422, readable_validation_errors(exc))
    if isinstance(exc, StarletteHTTPException):
        return ApiError(exc.status_code, printable(str(exc.detail)), dict(exc.headers or {}))
    return None


def readable_validation_errors(exc: RequestValidationError) -> str:
    """One readable line per problem, e.g. "body.texts.2: Input should be a valid string"; pydantic's raw errors
    may hold the offending bytes or exception objects, which are not JSON, so they are rebuilt."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            where, message = "body", f"not valid JSON: {error.get('ctx', {}).get('error', message)}"
        elif error.get("loc") == ("body",) and error.get("type") in ("model_attributes_type", "dict_type"):
            message = "must be a JSON object"
        problems.append(f"{where}: {message}" if where else message)
    return printable("; ".join(problems) or "invalid request")


# ---------------------------------------------------------------- the protocols' error bodies

def detail_body(error: ApiError) -> dict:
    return {"detail": error.message}


def hf_inference_body(error: ApiError) -> dict:
    return {"error": error.message, "error_type": error.error_type}


@dataclass(frozen=True)
class Front:
    """One protocol's door into the app: the requests it answers, its limits and its error body."""

    name: str
    matches: Callable[[dict], bool]  # ASGI scope -> whether the request is for this front
    max_body_bytes: int
    error_body: Callable[[ApiError], dict]
    body_limit_source: str = "MAX_BODY_BYTES"  # where max_body_bytes comes from, for the 413's message
    max_texts: int = 0  # texts per request, for the fronts that classify
    max_files: int | None = None  # parts of a multipart body, for the fronts that take uploads

    def error_response(self, error: ApiError) -> JSONResponse:
        return JSONResponse(self.error_body(error), status_code=error.status, headers=error.headers)


def front_for(fronts: list[Front], scope: dict) -> Front | None:
    return next((front for front in fronts if front.matches(scope)), None)


def install_error_handlers(app: FastAPI, fronts: list[Front]) -> None:
    """Every mapped exception answered in the shape of the front the request came in by (the JSON API's for
    anything else, e.g. a 404)."""
    default = fronts[0]

    async def answer(request: Request, exc: Exception) -> JSONResponse:
        error = api_error_for(exc)
        if error is None:
            raise exc
        if error.logged:
            log.error("%s %s answered %d: %s", request.method, printable(request.url.path), error.status,
                      printable(error.logged))
        return (front_for(fronts, request.scope) or default).error_response(error)

    for kind in (ApiError, QueueFull, TextError, RequestTooLarge, InferenceFailed, RequestValidationError,
                 StarletteHTTPException):
        app.add_exception_handler(kind, answer)


# ---------------------------------------------------------------- ASGI middleware

class BodySizeLimit:
    """Refuse request bodies over a front's ``max_body_bytes``, and multipart bodies with more parts than its
    ``max_files``, with 413, whether or not Content-Length is sent, before the route reads any of it.

    Pure ASGI (no BaseHTTPMiddleware), and reading at most max_bytes + one chunk, so a huge body never sits in
    memory."""

    def __init__(self, app, fronts: list[Front]):
        self.app = app
        self.fronts = fronts

    async def __call__(self, scope, receive, send):
        front = front_for(self.fronts, scope) if scope["type"] == "http" else None
        if front is None:
            return await self.app(scope, receive, send)
        limit = front.max_body_bytes
        too_large = ApiError(413, f"request body larger than {limit} bytes ({front.body_limit_source})",
                             {"Connection": "close"})
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await front.error_response(too_large)(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await front.error_response(too_large)(scope, receive, send)
        parts = multipart_parts(scope, body)
        if front.max_files is not None and parts > front.max_files:
            too_many = ApiError(413, f"{parts} files in one upload; at most {front.max_files}", {"Connection": "close"})
            return await front.error_response(too_many)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


_BOUNDARY = re.compile(rb'boundary="?([^";,\s]+)', re.IGNORECASE)


def multipart_parts(scope: dict, body: bytes) -> int:
    """The parts of a multipart body (one per file or field), counted by its boundary; 0 for any other body."""
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
    found = _BOUNDARY.search(content_type) if content_type.lower().startswith(b"multipart/") else None
    return max(0, body.count(b"--" + found.group(1)) - 1) if found else 0


class ContainErrors:
    """Any exception a route lets through becomes a logged JSON 500 here instead of reaching the server.

    Starlette's outermost error middleware re-raises after sending its 500, and uvicorn then closes the
    connection, so a keep-alive client lost its connection along with the one request that failed. The log
    names the method and path only: never a header (the caller's Authorization token) or the body."""

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
            log.exception("unhandled error in %s %s", scope.get("method"), printable(scope.get("path", "")))
            if started:
                raise  # half a response is out: only closing the connection ends it cleanly
            body = json.dumps({"detail": "internal server error (logged)"}).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

"""The JSON API under ``/api``: ``POST /api/predict`` with ``{"text"}`` or ``{"texts"}``, and the model's status."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from ...core.texts import clean_text
from .classify import classify
from .errors import Front
from .state import ServingState

NOTHING_TO_CLASSIFY = "empty or only whitespace, control or invisible characters"
EXAMPLES = [  # one headline per class
    "Rebels and government sign ceasefire as UN envoy arrives in the capital",
    "Striker scores twice as champions win the league title on the final day",
    "Oil prices fall and stocks rally after the central bank holds interest rates",
    "NASA researchers test new chip that speeds up wireless internet for satellites",
]


class PredictRequest(BaseModel):
    """One text (``text``) or several (``texts``), never both."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": EXAMPLES[2]},
                                                                            {"texts": EXAMPLES[:2]}]})
    text: StrictStr | None = Field(None, description="A headline, or a whole article.")
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
    truncated: bool = Field(description="The text needed more than max_windows windows; only those were read.")
    windows: int = Field(description="Windows of max_length tokens read (overlapping by window_stride tokens).")
    abstained: bool = Field(description="The model is not sure: its confidence is under min_confidence. label, "
                                        "labels and probabilities are still given (its best guess).")
    confidence: float = Field(description="How sure the model is of its answer, by its own probabilities: the top "
                                          "label's (single-label), or the least sure of its per-label yes/no "
                                          "decisions (multi-label: p where a label is given, 1 - p where not).")
    min_confidence: float | None = Field(description="The confidence floor the answer was held to (MIN_CONFIDENCE, "
                                                     "else the model's abstain_below); null: none.")


class PredictResponse(BaseModel):
    predictions: list[TextPrediction]
    model_id: str
    revision: str
    quantization: str
    max_length: int = Field(description="Tokens per window.")
    max_windows: int = Field(description="Most windows read per text.")
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
    threshold: float | None = Field(description="Multi-label: the probability at which a label is given, for every "
                                                "label without a threshold of its own (see thresholds).")
    thresholds: dict[str, float] | None = Field(description="Multi-label: each label's threshold in use (its own, "
                                                            "chosen on validation, or the global one).")
    min_confidence: float | None = Field(description="The confidence floor in use: an answer under it is flagged "
                                                     "abstained. null: none.")
    min_confidence_source: str = Field(description="Where the floor came from: MIN_CONFIDENCE (the Space's setting; "
                                                   "0 turns the model's off), model config (abstain_below), or none.")
    model_abstain_below: float | None = Field(description="The model's own floor (abstain_below in its config), "
                                                          "whether or not MIN_CONFIDENCE replaces it.")
    test_metrics: list[CardMetric] = Field(description="From the model card's model-index; empty if none.")
    quantization: str
    max_length: int
    max_windows: int
    window_stride: int
    max_texts_per_request: int
    max_windows_per_request: int = Field(description="Most windows one request may need (MAX_WINDOWS_PER_REQUEST, "
                                                     "at most MAX_QUEUE); a request over it gets 413.")
    max_text_chars: int = Field(description="Characters read from one text; the rest is cut and the text flagged "
                                            "truncated.")
    max_batch_size: int
    lanes: int = Field(description="Model sessions running batches side by side (INFERENCE_LANES).")
    lone_request_threads: int = Field(description="Threads of the session a request runs on when it is alone: "
                                                  "every core's, or a lane's, whichever answered a headline "
                                                  "faster when the server started.")
    load_seconds: float
    version: str


class Status(BaseModel):
    status: str
    detail: str | None = None


class ErrorResponse(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (413, 422, 429, 503)}


def json_api_router(state: ServingState, front: Front) -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.post("/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(request: PredictRequest) -> Response:
        """Classify one text or a list of texts: the top label, the labels given and every label's probability,
        per text. A text longer than max_length tokens is read in overlapping windows whose probabilities are
        averaged (multi-label: the highest of each label's). An answer whose confidence is under the floor
        (``min_confidence``: MIN_CONFIDENCE, else the model's own) says ``"abstained": true`` and keeps its labels
        and probabilities.

        The ``Server-Timing`` header says where the time went, in ms: waiting for a batch (``queue``), the batch's
        tokenization and model call (``batch``, with its size), building the response (``respond``), and the whole
        handler (``handler``; parsing and validating the body come before it)."""
        result = await classify(state, front, request.as_list(), "texts")
        service = result.service
        truncated = [i for i, p in enumerate(result.predictions) if p.truncated]
        warnings = [f"texts {truncated[:20]} were longer than {service.policy.max_windows} windows of "
                    f"{service.max_length} tokens; only those were read"] if truncated else []
        response = PredictResponse(predictions=[TextPrediction(**p.to_dict()) for p in result.predictions],
                                   model_id=service.config.model_id, revision=service.resolved_revision,
                                   quantization=service.quantization, max_length=service.max_length,
                                   max_windows=service.policy.max_windows, warnings=warnings)
        # Serialized here: returning the model would make FastAPI validate and serialize it a second time, 0.2 ms
        # of a ~13 ms int8 request on this machine. response_model above still documents it in /docs.
        body = response.model_dump_json()
        return Response(body, media_type="application/json", headers={"Server-Timing": result.server_timing()})

    @router.get("/health", response_model=Status)
    async def health() -> Status:
        """The process is up (the model may still be loading: see /api/ready)."""
        return Status(status="ok")

    @router.get("/ready", response_model=Status, responses={503: {"model": Status}})
    async def ready():
        """200 once the model is loaded and warm; 503 while loading or if loading failed (the server's log says
        why)."""
        if state.service is not None:
            return Status(status="ready")
        unavailable = state.unavailable()
        return JSONResponse(Status(status=state.status, detail=unavailable.message).model_dump(),
                            status_code=unavailable.status, headers=unavailable.headers)

    @router.get("/info", response_model=InfoResponse, responses={503: {"model": ErrorResponse}})
    async def info() -> InfoResponse:
        """Model id, resolved revision, labels, thresholds, the confidence floor and its source, test metrics from
        the model card, quantization, version."""
        return InfoResponse(**state.require_service().info())

    return router


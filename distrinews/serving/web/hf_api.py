"""The Hugging Face inference protocol for text classification, at ``POST /``: what ``InferenceClient(base_url=URL)
.text_classification``, huggingface.js's ``textClassification({endpointUrl: URL})``, Inference Endpoints and
text-embeddings-inference speak.

    curl -s localhost:7860/ -H 'content-type: application/json' \\
         -d '{"inputs": "Stocks rally", "parameters": {"top_k": 2}}'
    [[{"label": "Business", "score": 0.93}, {"label": "Sci/Tech", "score": 0.04}]]

``inputs`` is a string or a list of strings; ``parameters`` (optional) holds ``top_k`` (at least 1; default
every label) and ``function_to_apply`` (``softmax``, ``sigmoid`` or ``none``: the raw logits; default the model's
own), and unknown keys in it or beside it (e.g. the old ``options``) are ignored. The answer is always one list
per input, sorted by score. The ``X-Windows`` header says how many windows each text was read in. The protocol
has no room for "not sure", so the label list stays whole and headers say it: ``X-Abstained`` is ``1`` for each
input whose confidence is under the floor (its answer is the model's best guess), else ``0``, comma-separated in
input order, and ``X-Min-Confidence`` is that floor (``none`` when there is none). Errors are
``{"error": ..., "error_type": ...}`` with the statuses of ``/api/predict``. The ``Authorization`` header these
clients send by default is neither required nor read.
"""

from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from ...core.predict import Prediction
from ...core.texts import clean_text
from .classify import classify
from .errors import Front
from .json_api import EXAMPLES, NOTHING_TO_CLASSIFY
from .state import ServingState

HF_INFERENCE_PATH = "/"


class TextClassificationParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    top_k: StrictInt | None = Field(None, ge=1, description="Return the k most likely labels (default: all).")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None, description="How logits become scores (default: the model's own; none = raw logits).")


class TextClassificationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"inputs": EXAMPLES[2]}, {"inputs": EXAMPLES[:2], "parameters": {"top_k": 2}}]})
    inputs: StrictStr | list[StrictStr] = Field(description="A text, or a list of texts.")
    parameters: TextClassificationParameters | None = None

    @model_validator(mode="after")
    def _something_to_classify(self) -> "TextClassificationRequest":
        if isinstance(self.inputs, list) and not self.inputs:
            raise ValueError('"inputs" is an empty list')
        blank = [i for i, text in enumerate(self.as_list()) if not clean_text(text)]
        if blank:
            where = '"inputs"' if isinstance(self.inputs, str) else f'"inputs" items {blank[:10]}'
            raise ValueError(f"{where} {'is' if isinstance(self.inputs, str) else 'are'} {NOTHING_TO_CLASSIFY}")
        return self

    def as_list(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


class LabelScore(BaseModel):
    label: str
    score: float


def ranked(prediction: Prediction, parameters: TextClassificationParameters | None) -> list[dict]:
    """One text's labels with their scores, highest first, cut to ``top_k``."""
    # The model's own function by default (sigmoid for a multi-label model), as transformers' pipeline chooses.
    function = (parameters and parameters.function_to_apply) or prediction.score_function
    scores = sorted(prediction.scores(function).items(), key=lambda item: item[1], reverse=True)
    top_k = parameters.top_k if parameters and parameters.top_k else len(scores)
    return [{"label": label, "score": score} for label, score in scores[:top_k]]


def hf_inference_router(state: ServingState, front: Front) -> APIRouter:
    router = APIRouter()

    @router.post(HF_INFERENCE_PATH, response_model=list[list[LabelScore]], tags=["Hugging Face inference protocol"],
                 responses={code: {"description": "{\"error\": ..., \"error_type\": ...}"}
                            for code in (413, 422, 429, 503)})
    async def text_classification(request: TextClassificationRequest) -> Response:
        """Classify ``inputs`` as the Hugging Face inference API does: one list of ``{label, score}`` per input,
        sorted by score. Long texts are read in overlapping windows, as in ``/api/predict``.

        Headers: ``X-Windows``, the windows read per input; ``X-Abstained``, ``1`` per input whose answer is "not
        sure" (confidence under the floor; every label is still listed), else ``0``; ``X-Min-Confidence``, that
        floor or ``none``. All comma-separated in input order where per input."""
        result = await classify(state, front, request.as_list(), "inputs")
        body = json.dumps([ranked(p, request.parameters) for p in result.predictions])
        return Response(body, media_type="application/json",
                        headers={"Server-Timing": result.server_timing(), "X-Windows": result.windows_header(),
                                 "X-Abstained": result.abstained_header(),
                                 "X-Min-Confidence": result.floor_header()})

    return router

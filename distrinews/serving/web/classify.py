"""The one classify use case behind every API route: limits, the batched predict path, and where the time went.

A protocol's router parses its own request shape into a list of texts and renders the predictions in its own
response shape; everything between (readiness, the per-request text limit, cleaning, windows, batching,
isolation, timing) is here and in ``ClassifierService``, so the two doors cannot drift apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from ...core.predict import Prediction
from ..service import ClassifierService
from .errors import ApiError, Front
from .state import ServingState


@dataclass
class Classified:
    predictions: list[Prediction]
    service: ClassifierService
    timing: dict[str, float]
    started: float  # time.perf_counter() when the route began

    def server_timing(self) -> str:
        """The ``Server-Timing`` header, in ms: waiting for a batch (``queue``), the batches' tokenization and
        model call (``batch``, with the largest batch's size in windows), building the response (``respond``)
        and the whole handler (``handler``; parsing and validating the body come before it)."""
        finished = time.perf_counter()
        timing = self.timing
        return (f"queue;dur={timing['queue'] * 1000:.3f}, batch;dur={timing['batch'] * 1000:.3f};"
                f'desc="{timing["batch_size"]} windows", respond;dur={(finished - timing["done"]) * 1000:.3f}, '
                f"handler;dur={(finished - self.started) * 1000:.3f}")

    def windows_header(self) -> str:
        """Windows read per text, comma-separated (the HF protocol's body has no room for it)."""
        return ",".join(str(p.windows) for p in self.predictions)

    def abstained_header(self) -> str:
        """1 where a text's answer is "not sure" (confidence under the floor), else 0, one per text,
        comma-separated."""
        return ",".join("1" if p.abstained else "0" for p in self.predictions)

    def floor_header(self) -> str:
        """The confidence floor the answers were held to, or ``none``."""
        floor = self.predictions[0].min_confidence  # one floor per service, so every text's is the same
        return "none" if floor is None else repr(floor)


async def classify(state: ServingState, front: Front, texts: Sequence[str], field: str) -> Classified:
    """Predictions for ``texts`` sent as the request's ``field``; refuses more than ``front.max_texts``."""
    started = time.perf_counter()
    service = state.require_service()
    if len(texts) > front.max_texts:
        raise ApiError(422, f'"{field}" has {len(texts)} items; at most {front.max_texts} per request '
                            "(MAX_TEXTS_PER_REQUEST)")
    timing: dict[str, float] = {}
    predictions = await service.predict(texts, timing)
    timing["done"] = time.perf_counter()
    return Classified(predictions, service, timing, started)

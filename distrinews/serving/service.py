"""The model behind the Space: one typed serving config, and a service that loads, warms and batches.

``ClassifierService.load(config)`` picks the backend the CPU is best at (``distrinews.serving.backends``), warms
it up, and reads the test metrics from the model card. With an int8 graph that matches the weights (shipped with the
model, or cached from an earlier start) it reads only the graph, the tokenizer and the config: no torch, no
transformers. Otherwise it goes through the one loader (``load_classifier``) and exports the graph.
Every text is cut to ``MAX_TEXT_CHARS`` and cleaned before it is batched (``distrinews.core.texts``), a request
needing more than ``MAX_WINDOWS_PER_REQUEST`` windows is refused whole, and a batch that fails anyway is retried
one text at a time (``distrinews.serving.batching``), so one client's text never fails another's request.
A text longer than the model's window is read in overlapping windows (``distrinews.core.windows``); the
micro-batcher batches windows, not texts, so one long article shares batches with the headlines behind it.
``await service.predict(texts)`` / ``await service.explain(text)`` go through the micro-batcher; the
synchronous ``predict_now`` is the same path without batching (warm-up, scripts, benchmarks).

    MODEL_ID=USER/NAME MODEL_REVISION=SHA QUANTIZE=auto uvicorn app.app:app --port 7860
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import functools
import logging
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from .agreement import probe_batch
from ..core.machine import usable_cores
from .backends import QUANTIZATION_CHOICES, OnnxInt8Backend, build_backend, resolve_quantization
from .export import ONNX_INPUTS, SHIPPED_GRAPH, cache_folder_name, cached_graph, shipped_graph, weights_fingerprint
from .batching import MicroBatcher
from .explain import MAX_WORDS, Explanation, occlusion_of
from ..core.errors import InferenceFailed, ModelLoadError, RequestTooLarge, ServingConfigError
from ..core.model_files import read_serving_files, resolve_model_folder
from ..core.formats import AG_NEWS
from ..core.predict import Encoder, Prediction, encode_windows, encoder_for, model_max_length, model_task, \
    pad_id_of, predict_with, predictions_from, window_logits
from ..core.tasks import Task
from ..core.texts import check_texts, clean_text, cut_texts
from ..core.windows import DEFAULT_MAX_WINDOWS, TextWindows, WindowPolicy

log = logging.getLogger(__name__)


def _doc(text: str, env: str, blank_allowed: bool = False, **kwargs: Any) -> Any:
    """A field read from ``env``; a blank value means the default unless ``blank_allowed`` (then it is a value)."""
    return field(metadata={"help": text, "env": env, "blank_allowed": blank_allowed}, **kwargs)


@dataclass(frozen=True)
class ServingConfig:
    """How the Space serves; every field is read from the environment variable named in its metadata."""

    model_id: str = _doc("Hub repo id USER/NAME or a local model folder.", "MODEL_ID", default="")
    revision: str = _doc("Branch, tag or commit sha of a Hub model (pin a sha in production).", "MODEL_REVISION",
                         default="")
    quantize: str = _doc("auto (the int8 graph wherever ONNX Runtime is installed, unless it cannot be made or "
                         "decides unlike fp32 on the probe texts: then fp32 torch), none (fp32 torch) or int8 "
                         "(ONNX Runtime dynamic int8).", "QUANTIZE", default="auto")
    max_length: int = _doc("Tokens per window (0 = the model's maximum); 128 is what training uses.", "MAX_LENGTH",
                           default=128)
    max_windows: int = _doc("Most windows read per text: a longer text is read up to there and flagged truncated "
                            "(1 = the first window only).", "MAX_WINDOWS", default=DEFAULT_MAX_WINDOWS)
    window_stride: int = _doc("Tokens that consecutive windows share (-1 = a quarter of the window).",
                              "WINDOW_STRIDE", default=-1)
    max_batch_size: int = _doc("Most windows (a headline is one) in one model call.", "MAX_BATCH_SIZE", default=32)
    batch_wait_ms: float = _doc("Longest a window waits for company before its batch runs.", "BATCH_WAIT_MS",
                                default=1.0)
    max_queue: int = _doc("Most windows (a headline is one) waiting at once; a request that does not fit gets "
                          "429 + Retry-After, one that never can 413.", "MAX_QUEUE", default=1024)
    max_texts_per_request: int = _doc("Most texts in one request to /api/predict or the HF inference route.",
                                      "MAX_TEXTS_PER_REQUEST", default=64)
    max_windows_per_request: int = _doc("Most windows (a headline is one) one request may need, whichever route "
                                        "it comes by (at most MAX_QUEUE); a request over it is refused with its "
                                        "count (413).",
                                        "MAX_WINDOWS_PER_REQUEST", default=256)
    max_text_chars: int = _doc("Characters read from one text: the rest is cut before anything else is done with it, "
                               "and the text is flagged truncated.", "MAX_TEXT_CHARS", default=100_000)
    max_body_bytes: int = _doc("Largest request body accepted by the API routes, in bytes.", "MAX_BODY_BYTES",
                               default=256 * 1024)
    cors_allow_origins: str = _doc("Web origins whose pages may call the API routes from a browser: '*' (any), a "
                                   "comma-separated list such as https://example.org, or empty for none. "
                                   "Credentials (cookies) are never allowed.", "CORS_ALLOW_ORIGINS", blank_allowed=True,
                                   default="*")
    ui_files_ttl_s: int = _doc("Seconds the demo keeps its result CSVs and uploaded files before deleting them.",
                               "UI_FILES_TTL_S", default=600)
    threads: int = _doc("Inference threads (0 = every usable core).", "INFERENCE_THREADS", default=0)
    lanes: int = _doc("Model sessions running batches side by side, sharing the threads (0 = one per thread for "
                      "the int8 graph, 1 for fp32 torch).", "INFERENCE_LANES", default=0)
    onnx_cache_dir: str = _doc("Where exported int8 ONNX models are cached.", "ONNX_CACHE_DIR",
                               default=str(Path.home() / ".cache" / "distrinews" / "onnx"))
    min_confidence: float | None = _doc("Confidence floor: an answer whose confidence is under it is flagged "
                                        "abstained ('not sure'), its labels and probabilities still given. Blank: "
                                        "the model's own (abstain_below in its config, if any); 0: none; else a "
                                        "number in (0, 1].", "MIN_CONFIDENCE", default=None)

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                env = next(f.metadata["env"] for f in dataclasses.fields(self) if f.name == name)
                raise ServingConfigError(f"{env}={getattr(self, name)!r}: {rule}")

        need(bool(self.model_id.strip()), "model_id", "set it to a Hub repo id USER/NAME or a local model folder")
        need(self.quantize in QUANTIZATION_CHOICES, "quantize", f"must be one of {', '.join(QUANTIZATION_CHOICES)}")
        for name in ("max_batch_size", "max_queue", "max_texts_per_request", "max_windows_per_request",
                     "max_text_chars", "max_body_bytes", "ui_files_ttl_s"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("max_length", "threads", "lanes", "batch_wait_ms"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(self.max_windows >= 1, "max_windows", "must be >= 1")
        need(self.window_stride >= -1, "window_stride", "must be >= 0, or -1 for a quarter of the window")
        bad_origins = [o for o in self.cors_origins if o != "*" and not _ORIGIN.fullmatch(o)]
        need(not bad_origins, "cors_allow_origins", f"{', '.join(map(repr, bad_origins))} is not '*' or an origin "
             "like https://example.org (scheme and host, optional port, no path)")
        need(self.max_queue >= max(self.max_batch_size, self.max_texts_per_request), "max_queue",
             "must hold at least one full batch and one full request")
        need(self.min_confidence is None or _is_probability(self.min_confidence), "min_confidence",
             "must be a number in [0, 1] (0 = no floor), or blank for the model's own floor (abstain_below)")

    @property
    def window_budget(self) -> int:
        """Windows one request may need: its own limit, within what the queue can ever hold."""
        return min(self.max_windows_per_request, self.max_queue)

    @property
    def cors_origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_allow_origins.split(",") if origin.strip()]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "ServingConfig":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or (raw.strip() == "" and not f.metadata["blank_allowed"]):
                continue
            try:
                values[f.name] = _PARSERS.get(f.type, str)(raw.strip())
            except ValueError:
                kind = "an integer" if f.type == "int" else "a number"
                raise ServingConfigError(f"{f.metadata['env']}={raw!r}: expected {kind}") from None
        return cls(**{**values, **overrides})


_ORIGIN = re.compile(r"https?://[^/\s:]+(:\d{1,5})?")
_PARSERS = {"int": int, "float": float, "float | None": float}  # by the field's annotation; others stay str


def _is_probability(value: Any) -> bool:
    """A real number in [0, 1] (not a bool, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


@dataclass
class ModelCardMetric:
    name: str
    value: float
    dataset: str | None = None
    split: str | None = None


def read_card_metrics(model_folder: Path) -> list[ModelCardMetric]:
    """Evaluation results from the model card's ``model-index``; empty when there is no card or no results."""
    from huggingface_hub import ModelCard

    card_path = model_folder / "README.md"
    if not card_path.is_file():
        return []
    try:
        card = ModelCard.load(card_path, ignore_metadata_errors=True)
        results = getattr(card.data, "eval_results", None) or []
        return [ModelCardMetric(name=r.metric_type, value=float(r.metric_value), dataset=r.dataset_name,
                                split=getattr(r, "dataset_split", None))
                for r in results if isinstance(r.metric_value, (int, float))]
    except Exception as err:  # noqa: BLE001 - a malformed card must not stop the model serving
        log.warning("no test metrics from the model card in %s: %s", model_folder, err)
        return []


def resolved_revision(model_id: str, model_folder: Path) -> str:
    """The commit sha a Hub model was loaded at (its snapshot folder is named after it, even when the revision
    asked for was a branch); ``local:<weights hash>`` for a local folder."""
    return f"local:{weights_fingerprint(model_folder)}" if Path(model_id).is_dir() else model_folder.name


@dataclass
class ServedModel:
    """A backend and what turns texts into its input and its output into labels."""

    backend: Any  # TorchBackend or OnnxInt8Backend: .logits and .quantization, over every thread
    encoder: Any  # an Encoder, or a slow transformers tokenizer
    task: Task  # the labels, and which of them a row of scores gives
    policy: WindowPolicy
    lanes: list = field(default_factory=list)  # backends that run batches side by side (empty: ``backend``)

    @property
    def max_length(self) -> int:
        return self.policy.max_length


def window_policy(config: ServingConfig, model_limit: int) -> WindowPolicy:
    """The windows of ``config`` for a model that reads at most ``model_limit`` tokens."""
    length = min(config.max_length or model_limit, model_limit)
    try:
        return WindowPolicy(length, config.window_stride, config.max_windows)
    except ValueError as err:
        raise ServingConfigError(f"WINDOW_STRIDE={config.window_stride} with windows of {length} tokens: "
                                 f"{err}") from None


def load_served_model(folder: Path, quantization: str, config: ServingConfig, *, cache_key: str,
                      threads: int) -> ServedModel:
    """The model in ``folder`` behind the backend for ``quantization`` (``none`` or ``int8``), with its lanes."""
    served = _load_backend(folder, quantization, config, cache_key=cache_key, threads=threads)
    lanes = config.lanes or (threads if served.backend.quantization == "int8" else 1)
    if lanes > 1 and served.backend.quantization == "int8":
        served.lanes = [OnnxInt8Backend(served.backend.path, max(1, threads // lanes)) for _ in range(lanes)]
    elif lanes > 1:  # torch's threads are the process's: sessions side by side would share one pool
        log.warning("INFERENCE_LANES=%d ignored: the fp32 torch backend runs one lane", lanes)
    return served


def _load_backend(folder: Path, quantization: str, config: ServingConfig, *, cache_key: str,
                  threads: int) -> ServedModel:
    cache_dir = Path(config.onnx_cache_dir)
    if quantization == "int8":
        graph = shipped_graph(folder) or _if_file(cached_graph(cache_dir, cache_key))
        files = read_serving_files(folder) if graph else None
        if graph and files:  # the cold-start path: no torch, no transformers
            policy = window_policy(config, files.max_length)
            return ServedModel(OnnxInt8Backend(graph, threads), Encoder.from_files(files, policy), files.task,
                               policy)
    try:
        from ..core.modeling import load_classifier
    except ImportError as err:
        raise ModelLoadError(
            f"{folder} has no int8 graph matching its weights ({SHIPPED_GRAPH}: `distrinews push` uploads one, "
            f"`distrinews export-onnx MODEL_DIR` writes one), and serving without it needs torch and transformers, "
            f"which are not installed ({err})") from None
    model, tokenizer = load_classifier(str(folder))
    policy = window_policy(config, model_max_length(model, tokenizer))
    task = model_task(model)
    probes = probe_batch(tokenizer, policy.max_length, ONNX_INPUTS) if quantization == "int8" else None
    backend = build_backend(model, quantization, cache_dir=cache_dir, cache_key=cache_key, threads=threads,
                            probes=probes, task=task, fall_back=config.quantize == "auto")
    return ServedModel(backend, encoder_for(tokenizer, policy) or tokenizer, task, policy)


def served_task(task: Task, min_confidence: float | None) -> Task:
    """The model's task held to MIN_CONFIDENCE where it is set (0: no floor), else to the model's own floor."""
    return task if min_confidence is None else task.with_floor(min_confidence)


def _if_file(path: Path) -> Path | None:
    return path if path.is_file() else None


# The text the lone-request sessions are timed on at start (about an AG News headline and its description), how
# often, and after how long a pause: longer than ONNX Runtime's worker threads spin after a run, so each timed call
# starts as a lone request at an idle server does.
LONE_PROBE_WORDS = "markets rally as the central bank holds rates steady and oil slides".split()
LONE_PROBE_RUNS = 5
LONE_PROBE_IDLE_S = 0.05

# Requests with more characters than this are cleaned and tokenized off the event loop (a 256 KiB article takes
# tens of ms), so the other requests and the health checks keep being answered meanwhile.
PREPARE_ON_LOOP_CHARS = 20_000


class ClassifierService:
    """A loaded, warmed model behind a micro-batcher. Build with ``load``; ``start``/``stop`` the batcher."""

    def __init__(self, config: ServingConfig, served: ServedModel, resolved_revision: str,
                 card_metrics: list[ModelCardMetric], load_seconds: float):
        self.config = config
        self.backend = served.backend
        self.encoder = served.encoder
        self.model_floor = served.task.abstain_below  # the model's own, from its config
        self.task = served_task(served.task, config.min_confidence)
        self.policy = served.policy
        self.max_length = served.max_length
        self.resolved_revision = resolved_revision
        self.card_metrics = card_metrics
        self.load_seconds = load_seconds
        self.texts_classified = 0
        self.lanes = served.lanes or [served.backend]
        self.lone_backend = served.backend  # the session a lone request runs on (choose_lone_backend)
        self.lone_timings_ms: dict[str, float] = {}
        self.batcher: MicroBatcher[Any] = MicroBatcher(
            self._window_logits, max_batch_size=config.max_batch_size, max_wait_ms=config.batch_wait_ms,
            max_queue=config.max_queue, size_of=len,
            lanes=[functools.partial(self._window_logits, backend=lane) for lane in self.lanes],
            run_alone=lambda windows: self._window_logits(windows, self.lone_backend))

    @classmethod
    def load(cls, config: ServingConfig) -> "ClassifierService":
        started = time.perf_counter()
        # One snapshot (one commit) gives the weights, the graph, the tokenizer, the card and the revision shown.
        folder = resolve_model_folder(config.model_id, config.revision or None, extra_patterns=(SHIPPED_GRAPH,))
        revision = resolved_revision(config.model_id, folder)
        quantization = resolve_quantization(config.quantize)
        served = load_served_model(folder, quantization, config,
                                   cache_key=cache_folder_name(config.model_id, revision),
                                   threads=config.threads or usable_cores())
        service = cls(config, served, revision, read_card_metrics(folder), load_seconds=0.0)
        service.warm_up()
        service.choose_lone_backend()
        service.load_seconds = time.perf_counter() - started
        log.info("serving %s at %s with quantization=%s, loaded and warm in %.1f s", config.model_id, revision,
                 service.quantization, service.load_seconds)
        return service

    @property
    def labels(self) -> list[str]:
        return list(self.task.labels)

    @property
    def quantization(self) -> str:
        return self.backend.quantization

    def warm_up(self) -> None:
        """First calls allocate buffers and pick kernels; pay that before the first user does."""
        # One word outside ASCII: text cleaning builds its table on the first such text (core/texts.py).
        words = "markets rally as the central bank holds rates steady in Zürich".split()
        batch = [" ".join(words[: 1 + i % len(words)]) for i in range(self.config.max_batch_size)]
        for backend in {id(b): b for b in (self.backend, *self.lanes)}.values():
            for length in (1, 8, 40, self.max_length):
                self.predict_now([" ".join(words[i % len(words)] for i in range(length))], backend)
            self.predict_now(batch, backend)

    def choose_lone_backend(self, runs: int = LONE_PROBE_RUNS, idle_s: float = LONE_PROBE_IDLE_S) -> None:
        """Time a headline on the session over every core and on a lane's (fewer threads), in turns, each after an
        idle pause as a lone request comes, and let lone requests take the faster. Which wins depends on the CPU
        and what runs it: a session whose worker threads sleep pays for waking them on every operator's hand-off,
        and splitting one short text's small matmuls over threads may not pay that back."""
        candidates = {f"{backend.threads} threads": backend for backend in (self.backend, self.lanes[0])}
        if len(candidates) < 2:
            return
        headline = " ".join(LONE_PROBE_WORDS * 4)
        seconds: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(runs):
            for name, backend in candidates.items():
                time.sleep(idle_s)
                started = time.perf_counter()
                self.predict_now([headline], backend)
                seconds[name].append(time.perf_counter() - started)
        self.lone_timings_ms = {name: round(statistics.median(times) * 1000, 3) for name, times in seconds.items()}
        fastest = min(self.lone_timings_ms, key=self.lone_timings_ms.get)
        self.lone_backend = candidates[fastest]
        log.info("a lone request runs on the session of %s (median ms of a headline after an idle pause: %s)",
                 fastest, self.lone_timings_ms)

    def predict_now(self, texts: Sequence[str], backend: Any = None) -> list[Prediction]:
        """Synchronous, unbatched: the one predict path with this service's backend (or one of its lanes)."""
        return predict_with((backend or self.backend).logits, self.encoder, self.task, texts,
                            max_length=self.max_length, batch_size=self.config.max_batch_size, policy=self.policy,
                            pad_to_multiple_of=1)  # CPU: padding is wasted work

    def _window_logits(self, windows: list[list[int]], backend: Any = None) -> list:
        return window_logits((backend or self.backend).logits, windows, pad_id_of(self.encoder),
                             batch_size=self.config.max_batch_size, pad_to_multiple_of=1)

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def predict(self, texts: Sequence[str], timing: dict[str, float] | None = None, *,
                      max_windows: int | None = None) -> list[Prediction]:
        """Predictions for ``texts``, each cut to MAX_TEXT_CHARS characters and cleaned first (a cut text is flagged
        truncated). Raises ``TextError`` naming the first text with nothing to classify, ``RequestTooLarge`` when
        they need more than ``max_windows`` windows (default: ``config.window_budget``), ``QueueFull`` when the
        queue has no room for them now, and ``InferenceFailed`` naming the texts the model failed on (a bug: every
        cleaned text should classify). ``timing`` receives where the time went (``MicroBatcher.submit``)."""
        windowed = await self._windows(texts)
        owners = [index for index, text in enumerate(windowed) for _ in text.windows]
        self._within_budget(len(windowed), len(owners), max_windows)
        try:
            logits = await self.batcher.submit([ids for text in windowed for ids in text.windows], timing)
        except InferenceFailed as err:  # name the texts, not their windows
            raise InferenceFailed(sorted({owners[i] for i in err.indices}), err.error) from None
        self.texts_classified += len(windowed)
        return predictions_from(self.task, windowed, logits)

    async def count_windows(self, texts: Sequence[str]) -> list[int]:
        """The windows each text would be read in by ``predict`` (what the request budget counts), e.g. to split a
        long list into requests that fit it; raises ``TextError`` as ``predict`` does."""
        return [len(text.windows) for text in await self._windows(texts)]

    def _within_budget(self, texts: int, windows: int, max_windows: int | None) -> None:
        # Never more than the queue holds: a request that could never fit would be refused as busy (429) forever.
        limit = min(self.config.window_budget if max_windows is None else max_windows, self.batcher.max_queue)
        if windows > limit:
            raise RequestTooLarge(f"{texts} texts need {windows} windows of {self.max_length} tokens; at most "
                                  f"{limit} per request (MAX_WINDOWS_PER_REQUEST): send fewer or shorter texts",
                                  windows=windows, limit=limit)

    async def _windows(self, texts: Sequence[str]) -> list[TextWindows]:
        size = sum(min(len(text), self.config.max_text_chars) for text in texts if isinstance(text, str))
        if size <= PREPARE_ON_LOOP_CHARS:
            return self.read_windows(texts)
        return await asyncio.to_thread(self.read_windows, texts)

    def read_windows(self, texts: Sequence[str]) -> list[TextWindows]:
        """Each text cut to MAX_TEXT_CHARS, cleaned, and read into windows (flagged truncated if it was cut); raises
        ``TextError`` naming the first text with nothing to classify."""
        texts, cut = cut_texts(texts, self.config.max_text_chars)
        windowed = encode_windows(self.encoder, check_texts(texts), self.policy)
        for text, was_cut in zip(windowed, cut):
            text.truncated = text.truncated or was_cut
        return windowed

    async def explain(self, text: str) -> Explanation:
        """Which parts of ``text`` pushed the prediction of its first window (``distrinews.serving.explain``): that
        window and one variant per scored part, within the request's window budget, cleaned and tokenized off the
        event loop. Raises ``TextError`` for a text with nothing to classify, ``QueueFull`` when the windows do not
        fit the queue now, ``ExplainUnavailable`` for a model whose tokenizer gives no token offsets."""
        most_parts = min(MAX_WORDS, self.config.window_budget - 1)
        occlusion = await asyncio.to_thread(occlusion_of, self.encoder, self.policy,
                                            text[:self.config.max_text_chars], most_parts, len(text))
        try:
            logits = await self.batcher.submit(occlusion.windows)
        except InferenceFailed as err:  # one text: name it, not its variants
            raise InferenceFailed([0], err.error) from None
        self.texts_classified += 1
        return occlusion.explanation(self.task, logits)

    def test_accuracy(self) -> float | None:
        for metric in self.card_metrics:
            if metric.name == "accuracy" and (metric.split in (None, "test")):
                return metric.value
        return None

    def label_thresholds(self) -> dict[str, float] | None:
        """Multi-label: each label's threshold (its own, or the global one); None for a single-label model."""
        if self.task.threshold is None:
            return None
        return dict(zip(self.task.labels, self.task.label_thresholds.tolist()))

    def floor_info(self) -> dict[str, Any]:
        """The confidence floor in use and where it came from."""
        if self.config.min_confidence is not None:
            source = "MIN_CONFIDENCE"
        else:
            source = "model config (abstain_below)" if self.model_floor is not None else "none"
        return {"min_confidence": self.task.abstain_below, "min_confidence_source": source,
                "model_abstain_below": self.model_floor}

    def info(self) -> dict[str, Any]:
        return {
            "model_id": self.config.model_id, "revision": self.config.revision or None,
            "resolved_revision": self.resolved_revision, "labels": list(self.task.labels),
            "problem_type": self.task.problem_type, "threshold": self.task.threshold,
            "thresholds": self.label_thresholds(), **self.floor_info(),
            "test_metrics": [dataclasses.asdict(m) for m in self.card_metrics],
            "quantization": self.quantization, "max_length": self.max_length,
            "max_windows": self.policy.max_windows, "window_stride": self.policy.stride,
            "max_texts_per_request": self.config.max_texts_per_request,
            "max_windows_per_request": self.config.window_budget,
            "max_text_chars": self.config.max_text_chars,
            "max_batch_size": self.config.max_batch_size, "lanes": len(self.lanes),
            "lone_request_threads": self.lone_backend.threads,
            "load_seconds": round(self.load_seconds, 2), "version": __version__,
        }


def texts_from_csv(path: str | Path, limit: int) -> list[str]:
    """Texts from an uploaded CSV: its ``text`` column, or title + description in the AG News layout
    (class, title, description), or else its first column. Blank rows are skipped; at most ``limit`` rows.
    A file that is not UTF-8 text in CSV form raises ``ValueError`` saying where."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            rows = [row for row in reader if any(cell.strip() for cell in row)]
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte {err.start}: {err.reason})") from None
    except csv.Error as err:
        raise ValueError(f"line {reader.line_num}: {err}") from None
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    if "text" in header:
        column = header.index("text")
        texts = [row[column] for row in rows[1:] if len(row) > column]
    elif AG_NEWS.is_original_row(rows[0]):
        texts = [f"{row[1]} {row[2]}" for row in rows if len(row) == 3]
    else:
        texts = [row[0] for row in rows]
    texts = [text.strip() for text in texts if clean_text(text)]  # nothing visible: skipped like a blank row
    if len(texts) > limit:
        raise ValueError(f"the file has {len(texts)} texts; at most {limit} are classified at once")
    return texts

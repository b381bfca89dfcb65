"""The model behind the Space: one typed serving config, and a service that loads, warms and batches.

``ClassifierService.load(config)`` picks the backend the CPU is best at (``distrinews.serving.backends``), warms
it up, and reads the test metrics from the model card. With an int8 graph that matches the weights (shipped with the
model, or cached from an earlier start) it reads only the graph, the tokenizer and the config: no torch, no
transformers. Otherwise it goes through the one loader (``load_classifier``) and exports the graph.
Every text is cleaned before it is batched (``distrinews.core.texts``), and a batch that fails anyway is retried
one text at a time (``distrinews.serving.batching``), so one client's text never fails another's request.
``await service.predict(texts)`` / ``await service.explain(text)`` go through the micro-batcher; the
synchronous ``predict_now`` is the same path without batching (warm-up, scripts, benchmarks).

    MODEL_ID=USER/NAME MODEL_REVISION=SHA QUANTIZE=auto uvicorn app.app:app --port 7860
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from .backends import QUANTIZATION_CHOICES, SHIPPED_GRAPH, OnnxInt8Backend, build_backend, cache_folder_name, \
    cached_graph, resolve_quantization, shipped_graph, usable_cores, weights_fingerprint
from .batching import MicroBatcher
from .explain import MAX_WORDS, Explanation, explanation_from, occlusion_texts
from ..core.errors import ModelLoadError, ServingConfigError
from ..core.model_files import read_serving_files, resolve_model_folder
from ..core.formats import AG_NEWS
from ..core.predict import Encoder, Prediction, encoder_for, model_max_length, model_task, predict_with
from ..core.tasks import Task
from ..core.texts import check_text, check_texts, clean_text

log = logging.getLogger(__name__)


def _doc(text: str, env: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text, "env": env}, **kwargs)


@dataclass(frozen=True)
class ServingConfig:
    """How the Space serves; every field is read from the environment variable named in its metadata."""

    model_id: str = _doc("Hub repo id USER/NAME or a local model folder.", "MODEL_ID", default="")
    revision: str = _doc("Branch, tag or commit sha of a Hub model (pin a sha in production).", "MODEL_REVISION",
                         default="")
    quantize: str = _doc("auto (int8 where the CPU has int8 dot-product units or torch is not installed), none "
                         "(fp32 torch) or int8 (ONNX Runtime dynamic int8).", "QUANTIZE", default="auto")
    max_length: int = _doc("Tokens read per text (0 = the model's maximum); longer texts are truncated and "
                           "flagged. 128 is what training uses.", "MAX_LENGTH", default=128)
    max_batch_size: int = _doc("Most texts in one model call.", "MAX_BATCH_SIZE", default=32)
    batch_wait_ms: float = _doc("Longest a text waits for company before its batch runs.", "BATCH_WAIT_MS",
                                default=1.0)
    max_queue: int = _doc("Most texts waiting at once; a request that does not fit gets 429 + Retry-After.",
                          "MAX_QUEUE", default=1024)
    max_texts_per_request: int = _doc("Most texts in one POST /api/predict.", "MAX_TEXTS_PER_REQUEST", default=64)
    max_body_bytes: int = _doc("Largest request body accepted under /api, in bytes.", "MAX_BODY_BYTES",
                               default=256 * 1024)
    threads: int = _doc("Inference threads (0 = every usable core).", "INFERENCE_THREADS", default=0)
    onnx_cache_dir: str = _doc("Where exported int8 ONNX models are cached.", "ONNX_CACHE_DIR",
                               default=str(Path.home() / ".cache" / "distrinews" / "onnx"))

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                env = next(f.metadata["env"] for f in dataclasses.fields(self) if f.name == name)
                raise ServingConfigError(f"{env}={getattr(self, name)!r}: {rule}")

        need(bool(self.model_id.strip()), "model_id", "set it to a Hub repo id USER/NAME or a local model folder")
        need(self.quantize in QUANTIZATION_CHOICES, "quantize", f"must be one of {', '.join(QUANTIZATION_CHOICES)}")
        for name in ("max_batch_size", "max_queue", "max_texts_per_request", "max_body_bytes"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("max_length", "threads", "batch_wait_ms"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(self.max_queue >= max(self.max_batch_size, self.max_texts_per_request, MAX_WORDS + 1), "max_queue",
             f"must hold at least one full batch, one full request and one explanation ({MAX_WORDS + 1} texts)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "ServingConfig":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw.strip() == "":
                continue
            try:
                values[f.name] = {"int": int, "float": float}.get(f.type, str)(raw.strip())
            except ValueError:
                raise ServingConfigError(f"{f.metadata['env']}={raw!r}: expected {f.type}") from None
        return cls(**{**values, **overrides})


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

    backend: Any  # TorchBackend or OnnxInt8Backend: .probabilities and .quantization
    encoder: Any  # an Encoder, or a slow transformers tokenizer
    task: Task  # the labels, and which of them a row of probabilities gives
    max_length: int


def load_served_model(folder: Path, quantization: str, *, max_length: int, cache_dir: Path, cache_key: str,
                      threads: int) -> ServedModel:
    """The model in ``folder`` behind the backend for ``quantization`` (``none`` or ``int8``)."""
    if quantization == "int8":
        graph = shipped_graph(folder) or _if_file(cached_graph(cache_dir, cache_key))
        files = read_serving_files(folder) if graph else None
        if graph and files:  # the cold-start path: no torch, no transformers
            length = min(max_length or files.max_length, files.max_length)
            return ServedModel(OnnxInt8Backend(graph, files.task, threads), Encoder.from_files(files, length),
                               files.task, length)
    try:
        from ..core.modeling import load_classifier
    except ImportError as err:
        raise ModelLoadError(
            f"{folder} has no int8 graph matching its weights ({SHIPPED_GRAPH}: `distrinews push` uploads one, "
            f"`distrinews export-onnx MODEL_DIR` writes one), and serving without it needs torch and transformers, "
            f"which are not installed ({err})") from None
    model, tokenizer = load_classifier(str(folder))
    length = min(max_length or 10**9, model_max_length(model, tokenizer))
    backend = build_backend(model, quantization, cache_dir=cache_dir, cache_key=cache_key, threads=threads)
    return ServedModel(backend, encoder_for(tokenizer, length) or tokenizer, model_task(model), length)


def _if_file(path: Path) -> Path | None:
    return path if path.is_file() else None


class ClassifierService:
    """A loaded, warmed model behind a micro-batcher. Build with ``load``; ``start``/``stop`` the batcher."""

    def __init__(self, config: ServingConfig, served: ServedModel, resolved_revision: str,
                 card_metrics: list[ModelCardMetric], load_seconds: float):
        self.config = config
        self.backend = served.backend
        self.encoder = served.encoder
        self.task = served.task
        self.max_length = served.max_length
        self.resolved_revision = resolved_revision
        self.card_metrics = card_metrics
        self.load_seconds = load_seconds
        self.batcher: MicroBatcher[Prediction] = MicroBatcher(
            self.predict_now, max_batch_size=config.max_batch_size, max_wait_ms=config.batch_wait_ms,
            max_queue=config.max_queue)

    @classmethod
    def load(cls, config: ServingConfig) -> "ClassifierService":
        started = time.perf_counter()
        # One snapshot (one commit) gives the weights, the graph, the tokenizer, the card and the revision shown.
        folder = resolve_model_folder(config.model_id, config.revision or None, extra_patterns=(SHIPPED_GRAPH,))
        revision = resolved_revision(config.model_id, folder)
        quantization = resolve_quantization(config.quantize)
        served = load_served_model(folder, quantization, max_length=config.max_length,
                                   cache_dir=Path(config.onnx_cache_dir),
                                   cache_key=cache_folder_name(config.model_id, revision),
                                   threads=config.threads or usable_cores())
        service = cls(config, served, revision, read_card_metrics(folder), load_seconds=0.0)
        service.warm_up()
        service.load_seconds = time.perf_counter() - started
        log.info("serving %s at %s with quantization=%s, loaded and warm in %.1f s", config.model_id, revision,
                 quantization, service.load_seconds)
        return service

    @property
    def labels(self) -> list[str]:
        return list(self.task.labels)

    @property
    def quantization(self) -> str:
        return self.backend.quantization

    def warm_up(self) -> None:
        """First calls allocate buffers and pick kernels; pay that before the first user does."""
        words = "markets rally as the central bank holds rates steady".split()
        for length in (1, 8, 40, self.max_length):
            self.predict_now([" ".join(words[i % len(words)] for i in range(length))])
        self.predict_now([" ".join(words[: 1 + i % len(words)]) for i in range(self.config.max_batch_size)])

    def predict_now(self, texts: Sequence[str]) -> list[Prediction]:
        """Synchronous, unbatched: the one predict path with this service's backend."""
        return predict_with(self.backend.probabilities, self.encoder, self.task, texts,
                            max_length=self.max_length, batch_size=self.config.max_batch_size,
                            pad_to_multiple_of=1)  # CPU: padding is wasted work

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def predict(self, texts: Sequence[str], timing: dict[str, float] | None = None) -> list[Prediction]:
        """Predictions for ``texts``; raises ``TextError`` naming the first text with nothing to classify, and
        ``InferenceFailed`` naming the texts the model failed on (a bug: every cleaned text should classify).
        ``timing`` receives where the time went (``MicroBatcher.submit``)."""
        return await self.batcher.submit(check_texts(texts), timing)

    async def explain(self, text: str) -> Explanation:
        words, variants = occlusion_texts(check_text(text), MAX_WORDS)
        return explanation_from(words, await self.batcher.submit(variants))

    def test_accuracy(self) -> float | None:
        for metric in self.card_metrics:
            if metric.name == "accuracy" and (metric.split in (None, "test")):
                return metric.value
        return None

    def info(self) -> dict[str, Any]:
        return {
            "model_id": self.config.model_id, "revision": self.config.revision or None,
            "resolved_revision": self.resolved_revision, "labels": list(self.task.labels),
            "problem_type": self.task.problem_type, "threshold": self.task.threshold,
            "test_metrics": [dataclasses.asdict(m) for m in self.card_metrics],
            "quantization": self.quantization, "max_length": self.max_length,
            "max_texts_per_request": self.config.max_texts_per_request,
            "max_batch_size": self.config.max_batch_size, "load_seconds": round(self.load_seconds, 2),
            "version": __version__,
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

"""Inference backends for serving: fp32 torch, or ONNX Runtime with dynamic int8 (``QUANTIZE``; ``auto`` is int8
wherever ONNX Runtime is installed and the graph agrees with fp32, ``agreement.py``).

Both are a ``LogitsFn`` handed to ``distrinews.core.predict.predict_with``, so tokenization, padding and
label mapping are shared. The int8 model is exported from the already loaded torch model (the one loader,
``load_classifier``, stays the only way in) with ``torch.onnx.export``, quantized with
``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations quantized per batch at run time: the
VNNI int8 dot-product path) and cached on disk under the model id and its resolved revision, so a restart
skips the export. ONNX Runtime's BERT fuser was tried on top and left out: on this CPU its quantized fused
attention (QAttention) ran DistilBERT-base at 33 ms per headline against 14 ms for the unfused int8 graph.

Both backends serve the model with its last layer computing only the position the head reads
(``distrinews.serving.first_position``): the same logits, and 12.7 -> 11.6 ms per int8 headline in a one-off interleaved
A/B of DistilBERT-base graphs here.

The int8 graph can ship with the model (``write_shipped_graph``: ``onnx/model.int8.onnx`` plus ``onnx/export.json``
naming the export recipe and the weights it was made from; ``distrinews push`` writes it). A Space that finds a
matching one serves it straight away, without torch or transformers: those are imported only to export a graph
on a miss, or for the fp32 torch backend.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import ModelLoadError
from ..core.predict import LogitsFn, torch_logits

log = logging.getLogger(__name__)

QUANTIZATION_CHOICES = ("auto", "none", "int8")
# Part of the cache key: change it whenever the export recipe changes, so no stale graph is served.
EXPORT_RECIPE = "onnx17-eager-int8-dynamic-first-position-v3"
ONNX_INPUTS = ("input_ids", "attention_mask")
SHIPPED_GRAPH = "onnx/model.int8.onnx"  # beside the weights, in the model folder or repo
SHIPPED_GRAPH_INFO = "onnx/export.json"  # {"recipe": EXPORT_RECIPE, "weights": {file: sha256}}


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_int8_dot_product() -> bool:
    """VNNI (x86) or dot-product (Arm) instructions: int8 matmuls run ~4x the fp32 rate without saturation."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def resolve_quantization(requested: str) -> str:
    """``auto`` -> ``int8`` wherever onnxruntime is installed, else ``none``. The int8 graph is the faster path on
    every CPU measured, with int8 dot-product units or without (DistilBERT, one headline over HTTP on 2 AVX2 cores
    without VNNI: 29.6 ms against 113 ms for fp32 torch); whether a graph made here may serve is decided when it
    is made (``build_backend``: the agreement check, and fp32 torch when the export fails)."""
    if requested not in QUANTIZATION_CHOICES:
        raise ValueError(f"QUANTIZE must be one of {', '.join(QUANTIZATION_CHOICES)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "int8" if _installed("onnxruntime") else "none"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class TorchBackend:
    """fp32 torch under ``inference_mode`` with one intra-op thread per usable core."""

    quantization = "none"

    def __init__(self, model, threads: int | None = None):
        import torch

        torch.set_num_threads(threads or usable_cores())
        self.model = model.eval()
        self.logits: LogitsFn = torch_logits(self.model)


class OnnxInt8Backend:
    """ONNX Runtime session over the dynamically int8-quantized export of a loaded torch model."""

    quantization = "int8"

    def __init__(self, onnx_path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        options.inter_op_num_threads = 1  # one batch at a time is served; parallelism lives inside each op
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Worker threads spin between the ops of a run (a sleeping pool costs a wake-up per op: ~1 ms per headline
        # here) and stop when the run returns: left spinning after it, they burned ~5 ms of CPU per request that
        # the event loop on the same 2 cores needed. Measured on the Space over HTTP, p50 of one headline:
        # no spinning 15.7-16.1 ms, spin + stop 15.3-15.4 ms (CPU per request as without spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.path = onnx_path
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        (logits,) = self.session.run(["logits"], {name: batch[name] for name in self.input_names})
        return logits


def build_backend(model, quantization: str, *, cache_dir: Path, cache_key: str, threads: int | None = None,
                  probes: dict[str, np.ndarray] | None = None, task=None, fall_back: bool = False):
    """The backend for an already resolved ``quantization`` (``none`` or ``int8``). ``model`` is rewritten in place
    for serving (``read_first_position_only``): do not train it or read its hidden states afterwards.

    A graph exported here is checked against the fp32 model on ``probes`` (``agreement.py``) when they are given.
    With ``fall_back`` (``QUANTIZE=auto``) a graph that fails the check, or cannot be exported at all, gives the
    fp32 torch backend instead, with a warning saying why."""
    if quantization not in ("none", "int8"):
        raise ValueError(f"unknown quantization {quantization!r}; resolve 'auto' with resolve_quantization first")
    from .first_position import read_first_position_only

    read_first_position_only(model)
    torch_backend = TorchBackend(model, threads)
    if quantization == "none":
        return torch_backend
    check = None if probes is None else functools.partial(
        _check_agreement, torch_backend.logits, probes, task, threads=threads, strict=fall_back)
    try:
        return OnnxInt8Backend(export_int8_onnx(model, cache_dir, cache_key, check=check), threads)
    except Exception as err:  # noqa: BLE001 - under auto, any export failure means serving fp32 instead
        if not fall_back:
            raise
        log.warning("QUANTIZE=auto serves fp32 torch: the int8 graph %s", err)
        return torch_backend


class Int8Disagreement(ModelLoadError):
    """An exported int8 graph decides too differently from its fp32 model to be served under ``auto``."""


def _check_agreement(fp32: LogitsFn, probes: dict[str, np.ndarray], task, graph: Path, *, threads: int | None,
                     strict: bool) -> None:
    from .agreement import measure_agreement

    agreement = measure_agreement(fp32, OnnxInt8Backend(graph, threads).logits, probes, task)
    if agreement.holds:
        log.info("int8 graph checked: %s", agreement)
    elif strict:
        raise Int8Disagreement(f"fails the agreement check: {agreement}")
    else:
        log.warning("QUANTIZE=int8 serves the int8 graph although it fails the agreement check: %s", agreement)


def weights_fingerprint(model_dir: Path) -> str:
    """A short content hash of a local model's weights and config, so a retrained folder gets a new cache entry."""
    files = sorted(Path(model_dir).glob("*.safetensors")) + sorted(Path(model_dir).glob("config.json"))
    return hashlib.sha256("".join(file_sha256(file) for file in files).encode()).hexdigest()[:16]


def weight_hashes(model_dir: Path, trust_blob_names: bool = True) -> dict[str, str]:
    """The sha256 of each ``*.safetensors`` file. In a Hub snapshot a weights file links to a blob named after
    its sha256 (the LFS object id), so with ``trust_blob_names`` nothing is read there; a plain file is hashed."""
    hashes = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        blob = Path(os.readlink(file)).name if file.is_symlink() else ""
        if trust_blob_names and re.fullmatch(r"[0-9a-f]{64}", blob):
            hashes[file.name] = blob
        else:
            hashes[file.name] = file_sha256(file)
    return hashes


def file_sha256(file: Path) -> str:
    """The sha256 of a file's content, remembered while its size and modification time stay the same (a local
    model's weights are hashed for its revision and to match its graph: once is enough, ~0.2 s per 250 MB)."""
    stat = Path(file).stat()
    return _file_sha256(str(Path(file).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_graph(model_dir: Path) -> Path | None:
    """The model's own int8 graph, if it was made by this export recipe from exactly these weights."""
    graph, info_file = Path(model_dir) / SHIPPED_GRAPH, Path(model_dir) / SHIPPED_GRAPH_INFO
    if not graph.is_file() or not info_file.is_file():
        return None
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
        recipe, weights = info["recipe"], info["weights"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring the shipped int8 graph in %s: unreadable %s (%s)", model_dir, SHIPPED_GRAPH_INFO, err)
        return None
    if recipe != EXPORT_RECIPE:
        log.warning("ignoring the shipped int8 graph in %s: made by export recipe %r, this version uses %r",
                    model_dir, recipe, EXPORT_RECIPE)
        return None
    # Blob names are read first (free); the files themselves only if those differ, in case a store names its
    # blobs by another 64-digit hash.
    if weights != weight_hashes(model_dir) and weights != weight_hashes(model_dir, trust_blob_names=False):
        log.warning("ignoring the shipped int8 graph in %s: it was exported from other weights", model_dir)
        return None
    return graph


def write_shipped_graph(model, model_dir: Path, tokenizer) -> Path:
    """Export ``model`` (loaded from ``model_dir`` with ``tokenizer``) to ``model_dir/onnx/``, unless a matching
    graph is there. The graph is written only if it passes the agreement check (``agreement.py``; else
    ``Int8Disagreement``): a Space serves a shipped graph under ``auto`` without checking it again.
    ``model`` is rewritten for serving (``read_first_position_only``): pass a copy you will not train."""
    existing = shipped_graph(model_dir)
    if existing is not None:
        return existing
    from ..core.predict import model_task
    from .agreement import probe_batch
    from .first_position import read_first_position_only

    read_first_position_only(model)
    target = Path(model_dir) / SHIPPED_GRAPH
    with _staging_folder(target.parent) as staging:
        _export_int8(model, staging / target.name)
        _check_agreement(TorchBackend(model).logits, probe_batch(tokenizer, 128, ONNX_INPUTS), model_task(model),
                         staging / target.name, threads=None, strict=True)
        (staging / Path(SHIPPED_GRAPH_INFO).name).write_text(json.dumps(
            {"recipe": EXPORT_RECIPE, "weights": weight_hashes(model_dir)}, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(target.parent, ignore_errors=True)  # a stale graph from other weights or another recipe
        staging.rename(target.parent)
    log.info("int8 ONNX graph written to %s", target)
    return target


def cache_folder_name(model_id: str, revision: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "--", model_id.strip("/"))[-80:]
    return f"{readable}--{re.sub(r'[^A-Za-z0-9._-]+', '-', revision)[:64]}"


def cached_graph(cache_dir: Path, cache_key: str) -> Path:
    """Where ``export_int8_onnx`` keeps the graph for ``cache_key``; it may not exist yet."""
    return Path(cache_dir) / f"{cache_key}--{EXPORT_RECIPE}" / "model.int8.onnx"


def export_int8_onnx(model, cache_dir: Path, cache_key: str, check: Callable[[Path], None] | None = None) -> Path:
    """``cache_dir/cache_key/model.int8.onnx``, exported + quantized on first use, atomically. ``check`` sees a new
    graph before it is cached; what it raises leaves nothing in the cache."""
    target = cached_graph(cache_dir, cache_key)
    if target.is_file():
        log.info("int8 ONNX model from cache: %s", target)
        return target
    with _staging_folder(target.parent) as staging:
        _export_int8(model, staging / target.name)
        if check is not None:
            check(staging / target.name)
        try:
            staging.rename(target.parent)
        except OSError:  # another process won the race; its copy is as good as ours
            pass
    log.info("int8 ONNX model written to %s", target)
    return target


class _staging_folder:
    """A private folder beside ``final``, removed on exit unless it was renamed into place, so two processes
    exporting together never read a half-written file."""

    def __init__(self, final: Path):
        self.final = Path(final)

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", dir=self.final.parent))
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _drop_preprocessing_advice(record: logging.LogRecord) -> bool:
    return "pre-processing before quantization" not in record.getMessage()


def _export_int8(model, target: Path) -> None:
    fp32 = target.with_name("model.fp32.onnx")
    _export_fp32(model, fp32)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs "consider pre-processing" on the root logger at every call: advice for static
    # quantization of vision models, noise here. Only that message is dropped; other threads log as usual.
    root = logging.getLogger()
    root.addFilter(_drop_preprocessing_advice)
    try:
        quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(_drop_preprocessing_advice)
    fp32.unlink()


def _export_fp32(model, path: Path) -> None:
    import torch

    model = model.eval()
    # Trace with real padding in the mask: a mask of all ones lets the masking code skip itself during tracing.
    input_ids = torch.full((2, 16), 1, dtype=torch.long)
    attention_mask = torch.ones((2, 16), dtype=torch.long)
    attention_mask[1, 9:] = 0
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
               "logits": {0: "batch"}}
    # Eager attention exports as MatMul + Softmax; SDPA's export adds NaN guards and mask conversions to every
    # layer (13 Where and 6 IsNaN ops in DistilBERT), ~4% of an int8 headline here. Same logits either way.
    attention = getattr(model.config, "_attn_implementation", None)
    switch = attention not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    # The TorchScript exporter: the dynamo exporter needs onnxscript, and its graph is what quantize_dynamic
    # handles well. Its tracer warnings are about shape checks that are constant for these encoders.
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (input_ids, attention_mask), str(path), dynamo=False,
                              input_names=list(ONNX_INPUTS), output_names=["logits"], dynamic_axes=dynamic,
                              opset_version=17, do_constant_folding=True)
    finally:
        if switch:
            model.set_attn_implementation(attention)

"""Inference backends for serving: fp32 torch, or ONNX Runtime with dynamic int8, chosen by what the CPU offers.

Both are a ``ProbabilityFn`` handed to ``distrinews.predict.predict_with``, so tokenization, padding and
label mapping are shared. The int8 model is exported from the already loaded torch model (the one loader,
``load_classifier``, stays the only way in) with ``torch.onnx.export``, quantized with
``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations quantized per batch at run time: the
VNNI int8 dot-product path) and cached on disk under the model id and its resolved revision, so a restart
skips the export. ONNX Runtime's BERT fuser was tried on top and left out: on this CPU its quantized fused
attention (QAttention) ran DistilBERT-base at 33 ms per headline against 14 ms for the unfused int8 graph.

Both backends serve the model with its last layer computing only the position the head reads
(``distrinews.first_position``): the same logits, and 12.7 -> 11.6 ms per int8 headline in a one-off interleaved
A/B of DistilBERT-base graphs here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .first_position import read_first_position_only
from .predict import ProbabilityFn, torch_probabilities

log = logging.getLogger(__name__)

QUANTIZATION_CHOICES = ("auto", "none", "int8")
# Part of the cache key: change it whenever the export recipe changes, so no stale graph is served.
EXPORT_RECIPE = "onnx17-eager-int8-dynamic-first-position-v3"
ONNX_INPUTS = ("input_ids", "attention_mask")


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
    """``auto`` -> ``int8`` where the CPU has int8 dot-product units and onnxruntime is installed, else ``none``."""
    if requested not in QUANTIZATION_CHOICES:
        raise ValueError(f"QUANTIZE must be one of {', '.join(QUANTIZATION_CHOICES)}, got {requested!r}")
    if requested != "auto":
        return requested
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "none"
    return "int8" if cpu_has_int8_dot_product() else "none"


class TorchBackend:
    """fp32 torch under ``inference_mode`` with one intra-op thread per usable core."""

    quantization = "none"

    def __init__(self, model, threads: int | None = None):
        torch.set_num_threads(threads or usable_cores())
        self.model = model.eval()
        self.probabilities: ProbabilityFn = torch_probabilities(self.model)


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

    def probabilities(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        (logits,) = self.session.run(["logits"], {name: batch[name] for name in self.input_names})
        logits = logits - logits.max(axis=-1, keepdims=True)
        exp = np.exp(logits, dtype=np.float64)
        return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def build_backend(model, quantization: str, *, cache_dir: Path, cache_key: str, threads: int | None = None):
    """The backend for an already resolved ``quantization`` (``none`` or ``int8``). ``model`` is rewritten in place
    for serving (``read_first_position_only``): do not train it or read its hidden states afterwards."""
    if quantization not in ("none", "int8"):
        raise ValueError(f"unknown quantization {quantization!r}; resolve 'auto' with resolve_quantization first")
    read_first_position_only(model)
    if quantization == "none":
        return TorchBackend(model, threads)
    return OnnxInt8Backend(export_int8_onnx(model, cache_dir, cache_key), threads)


def weights_fingerprint(model_dir: Path) -> str:
    """A short content hash of a local model's weights and config, so a retrained folder gets a new cache entry."""
    digest = hashlib.sha256()
    for file in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("config.json")):
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def cache_folder_name(model_id: str, revision: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "--", model_id.strip("/"))[-80:]
    return f"{readable}--{re.sub(r'[^A-Za-z0-9._-]+', '-', revision)[:64]}"


def export_int8_onnx(model, cache_dir: Path, cache_key: str) -> Path:
    """``cache_dir/cache_key/model.int8.onnx``, exported + quantized on first use, atomically."""
    target = Path(cache_dir) / f"{cache_key}--{EXPORT_RECIPE}" / "model.int8.onnx"
    if target.is_file():
        log.info("int8 ONNX model from cache: %s", target)
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    # Build in a private folder and rename it into place, so two workers starting together never read a half file.
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_key}.", dir=target.parent.parent))
    try:
        fp32 = staging / "model.fp32.onnx"
        _export_fp32(model, fp32)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(staging / target.name), weight_type=QuantType.QInt8)
        fp32.unlink()
        try:
            staging.rename(target.parent)
        except OSError:  # another process won the race; its copy is as good as ours
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("int8 ONNX model written to %s", target)
    return target


def _export_fp32(model, path: Path) -> None:
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

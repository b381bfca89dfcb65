"""Inference backends for serving: fp32 torch, or ONNX Runtime with dynamic int8 (``QUANTIZE``; ``auto`` is int8
wherever ONNX Runtime is installed and the graph agrees with fp32, ``agreement.py``).

Both are a ``LogitsFn`` handed to ``distrinews.core.predict.predict_with``, so tokenization, padding and
label mapping are shared. The int8 graph comes from ``distrinews.serving.export``: shipped with the model
(``distrinews push`` / ``export-onnx`` write it), cached from an earlier start, or exported here on a miss.
A Space that finds a matching shipped graph serves it straight away, without torch or transformers: those are
imported only to export a graph on a miss, or for the fp32 torch backend.

Both backends serve the model with its last layer computing only the position the head reads
(``distrinews.serving.first_position``): the same logits, and 12.7 -> 11.6 ms per int8 headline in a one-off interleaved
A/B of DistilBERT-base graphs here.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import numpy as np

from ..core.machine import usable_cores
from ..core.predict import LogitsFn, torch_logits
from .export import check_agreement, export_int8_onnx

log = logging.getLogger(__name__)

QUANTIZATION_CHOICES = ("auto", "none", "int8")


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

        self.threads = threads or usable_cores()
        torch.set_num_threads(self.threads)
        self.model = model.eval()
        self.logits: LogitsFn = torch_logits(self.model)


class OnnxInt8Backend:
    """ONNX Runtime session over the dynamically int8-quantized export of a loaded torch model."""

    quantization = "int8"

    def __init__(self, onnx_path: Path, threads: int | None = None):
        import onnxruntime as ort

        self.threads = threads or usable_cores()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1  # one batch at a time is served; parallelism lives inside each op
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Worker threads spin between the ops of a run and, as ONNX Runtime does by default, for a while after it.
        # Stopping them when a run returned saved that CPU, but a run that then finds its workers asleep and the
        # cores idle is far slower (docs/experiments.md): every lone request at a quiet Space paid for it. Only the session over every core has workers; a lane's single-thread session has none.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
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
        check_agreement, torch_backend.logits, probes, task, threads=threads, strict=fall_back)
    try:
        return OnnxInt8Backend(export_int8_onnx(model, cache_dir, cache_key, check=check), threads)
    except Exception as err:  # noqa: BLE001 - under auto, any export failure means serving fp32 instead
        if not fall_back:
            raise
        log.warning("QUANTIZE=auto serves fp32 torch: the int8 graph %s", err)
        return torch_backend

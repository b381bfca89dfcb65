"""The int8 ONNX export: the graph a model ships with, the graph a Space caches, and the check a new one passes.

    distrinews export-onnx runs/ag_news/model           # writes onnx/model.int8.onnx and onnx/export.json
    distrinews push runs/ag_news --repo_id USER/NAME     # the same, then uploads them with the weights

A graph is exported from an already loaded torch model (the one loader, ``load_classifier``, stays the only way
in) whose last layer computes only the position the head reads (``first_position.py``), with ``torch.onnx.export``,
and quantized with ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations quantized per batch at
run time: the VNNI int8 dot-product path). ONNX Runtime's BERT fuser was tried on top and left out: on this CPU its
quantized fused attention (QAttention) ran DistilBERT-base at 33 ms per headline against 14 ms for the unfused int8
graph. A new graph is checked against its fp32 model (``agreement.py``) before it is shipped or cached.

Shipped with a model (``write_shipped_graph``), the export owns exactly ``SHIPPED_FILES``: the graph and
``onnx/export.json``, naming the export recipe and the weights it was made from. Anything else in ``onnx/`` (a
transformers.js ``onnx/model.onnx``, say) belongs to the user, and export-onnx and push leave it alone, locally
and on the Hub. Both files are staged beside the model's folders and moved into place with ``os.replace``, the
info file last, so a half-written export never passes for a valid one. A Space that finds no matching shipped
graph exports into its cache (``export_int8_onnx``), under the model id, its resolved revision and the recipe, so
a restart skips the export.

Only the standard library is imported here: torch, transformers, ONNX Runtime and the serving backends are
imported by the functions that export, so the Space serving a shipped graph, and the push, never load them
for this module.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..core.errors import ModelLoadError

if TYPE_CHECKING:
    import numpy as np

    from ..core.predict import LogitsFn

log = logging.getLogger(__name__)

# Part of the cache key: change it whenever the export recipe changes, so no stale graph is served.
EXPORT_RECIPE = "onnx17-eager-int8-dynamic-first-position-v3"
ONNX_INPUTS = ("input_ids", "attention_mask")
SHIPPED_FOLDER = "onnx"  # beside the weights, in the model folder or repo; shared with the user's own ONNX files
SHIPPED_GRAPH = f"{SHIPPED_FOLDER}/model.int8.onnx"
SHIPPED_GRAPH_INFO = f"{SHIPPED_FOLDER}/export.json"  # {"recipe": EXPORT_RECIPE, "weights": {file: sha256}}
# The only files of a model the export writes, replaces, or (``distrinews push``) deletes on the Hub; the info
# file last, since it is what makes the graph count.
SHIPPED_FILES = (SHIPPED_GRAPH, SHIPPED_GRAPH_INFO)


class Int8Disagreement(ModelLoadError):
    """An exported int8 graph decides too differently from its fp32 model to be served under ``auto``."""


def check_agreement(fp32: LogitsFn, probes: dict[str, np.ndarray], task, graph: Path, *, threads: int | None,
                    strict: bool) -> None:
    """Compare ``graph`` with the ``fp32`` logits on ``probes``. Failing raises ``Int8Disagreement`` when
    ``strict``, else it is a warning: asked for by name (``QUANTIZE=int8``), the graph is served anyway."""
    from .agreement import measure_agreement
    from .backends import OnnxInt8Backend

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
    """Export ``model`` (loaded from ``model_dir`` with ``tokenizer``) into ``model_dir/onnx/``, unless a matching
    graph is there. The graph is written only if it passes the agreement check (``agreement.py``; else
    ``Int8Disagreement``): a Space serves a shipped graph under ``auto`` without checking it again. Only
    ``SHIPPED_FILES`` are written; any other file in ``onnx/`` stays as it was.
    ``model`` is rewritten for serving (``read_first_position_only``): pass a copy you will not train."""
    existing = shipped_graph(model_dir)
    if existing is not None:
        return existing
    from ..core.predict import model_task
    from .agreement import probe_batch
    from .backends import TorchBackend
    from .first_position import read_first_position_only

    read_first_position_only(model)
    model_dir = Path(model_dir)
    with _staging_folder(model_dir / SHIPPED_FOLDER) as staging:
        graph, info = (staging / Path(name).name for name in SHIPPED_FILES)
        _export_int8(model, graph)
        check_agreement(TorchBackend(model).logits, probe_batch(tokenizer, 128, ONNX_INPUTS), model_task(model),
                        graph, threads=None, strict=True)
        info.write_text(json.dumps({"recipe": EXPORT_RECIPE, "weights": weight_hashes(model_dir)}, indent=2) + "\n",
                        encoding="utf-8")
        _replace_shipped_files(staging, model_dir)
    log.info("int8 ONNX graph written to %s", model_dir / SHIPPED_GRAPH)
    return model_dir / SHIPPED_GRAPH


def _replace_shipped_files(staging: Path, model_dir: Path) -> None:
    """Move the staged ``SHIPPED_FILES`` over their namesakes in ``model_dir``, touching no other file. The old
    info file goes first and the new one last, so no info file ever vouches for a graph it was not written with."""
    (model_dir / SHIPPED_FOLDER).mkdir(exist_ok=True)
    (model_dir / SHIPPED_GRAPH_INFO).unlink(missing_ok=True)
    for name in SHIPPED_FILES:
        os.replace(staging / Path(name).name, model_dir / name)


def export_serving_graph(model_dir: Path, report: Callable[[str], None] = print) -> Path:
    """``distrinews export-onnx`` and ``distrinews push``: the int8 graph of the saved model in ``model_dir``,
    written into its ``onnx/`` (``write_shipped_graph``)."""
    if not Path(model_dir).is_dir():  # before seconds of torch and transformers imports
        raise ModelLoadError(f"{model_dir} is not a folder: give the folder of a saved model, e.g. RUN_DIR/model")
    from transformers.utils import logging as transformers_logging

    from ..core.modeling import load_classifier

    started = time.perf_counter()
    transformers_logging.disable_progress_bar()  # a weights-loading bar in the middle of the push's own messages
    try:
        model, tokenizer = load_classifier(str(model_dir))
        graph = write_shipped_graph(model, model_dir, tokenizer)
    finally:
        transformers_logging.enable_progress_bar()
    report(f"int8 ONNX graph for the Space: {graph} ({time.perf_counter() - started:.1f} s)")
    return graph


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
    # layer (Where and IsNaN ops), work a served headline pays for at every call. Same logits either way.
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

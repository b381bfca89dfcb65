"""The model a corpus is classified with: the Space's own ``ClassifierService`` (its backend and lanes, its windows,
its task and confidence floor), driven without HTTP and without the micro-batcher.

A file's answers are then the Space's for the same texts: each text is cut to MAX_TEXT_CHARS, cleaned and read in the
same windows, and the windows' scores are combined by the same ``predictions_from``. On a CPU the backend is the
int8 graph with one lane (a one-thread ONNX Runtime session) per core this process owns; on a GPU it is torch in
bf16 (fp16 where the GPU has no bf16) with batches eight tokens wide.

Batches are formed from one shard's windows alone, sorted by length (``length_sorted_chunks``), so they are the same
whatever the number of processes or lanes, and wherever a rerun resumes. That matters for int8: dynamic quantization
scales a batch's activations by the batch's own range, so a window's logits depend on the windows beside it. Each
batch runs whole on one one-thread lane, which makes its logits independent of which lane, or process, runs it.
"""

from __future__ import annotations

import os
import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..core.machine import usable_cores
from ..core.windows import DEFAULT_MAX_WINDOWS
from ..core.predict import Prediction, length_sorted_chunks, pad_batch, pad_id_of, predictions_from

BACKENDS = ("auto", "int8", "torch")
CPU_BATCH_WINDOWS = 32  # the Space's MAX_BATCH_SIZE
GPU_BATCH_WINDOWS = 128


@dataclass(frozen=True)
class EngineOptions:
    model: str
    revision: str = ""
    backend: str = "auto"  # one of BACKENDS: auto = int8 on a CPU (where ONNX Runtime is installed), torch on a GPU
    batch_size: int = 0  # windows per model call; 0 = CPU_BATCH_WINDOWS, or GPU_BATCH_WINDOWS on a GPU
    min_confidence: float | None = None  # None: the model's own floor
    max_length: int = 128  # tokens per window, as the Space reads (0 = the model's maximum)
    max_windows: int = DEFAULT_MAX_WINDOWS  # most windows read per text, as the Space reads


class CorpusModel:
    """``predict(texts)`` for one shard's texts at a time, its batches spread over the lanes."""

    def __init__(self, service, device: str, batch_size: int) -> None:
        self.service, self.device, self.batch_size = service, device, batch_size
        self.gpu = device.startswith("cuda")
        self.lanes = list(service.lanes)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for lane in self.lanes:
            self._free.put(lane)
        self._pool = ThreadPoolExecutor(max_workers=len(self.lanes), thread_name_prefix="corpus-lane")

    @classmethod
    def load(cls, options: EngineOptions, device: str = "cpu", processes_here: int = 1) -> "CorpusModel":
        """The model ``options`` names, for one of ``processes_here`` processes sharing this machine's cores."""
        from ..serving.service import ClassifierService, ServingConfig

        gpu = device.startswith("cuda")
        threads = max(1, usable_cores() // processes_here) if not gpu else 1
        quantize = {"auto": "none" if gpu else "auto", "int8": "int8", "torch": "none"}[options.backend]
        cache = {"onnx_cache_dir": os.environ["ONNX_CACHE_DIR"]} if os.environ.get("ONNX_CACHE_DIR") else {}
        config = ServingConfig(model_id=options.model, revision=options.revision, quantize=quantize,
                               threads=threads, lanes=0, min_confidence=options.min_confidence,
                               max_length=options.max_length, max_windows=options.max_windows, **cache)
        service = ClassifierService.load(config)
        if gpu and service.quantization == "none":
            _to_gpu(service.backend, device)
        return cls(service, device, options.batch_size or (GPU_BATCH_WINDOWS if gpu else CPU_BATCH_WINDOWS))

    @property
    def task(self):
        return self.service.task

    def describe(self) -> str:
        service = self.service
        kind = "int8 ONNX Runtime" if service.quantization == "int8" else f"torch on {self.device}"
        lanes = "" if self.gpu else f", {len(self.lanes)} lane(s) of {self.lanes[0].threads} thread(s)"
        return f"{kind}{lanes}, batches of up to {self.batch_size} windows of {service.max_length} tokens"

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Each text's prediction, as the Space gives it; texts must have something to classify (``TextError``)."""
        windowed = self.service.read_windows(texts)
        flat = [ids for text in windowed for ids in text.windows]
        chunks = length_sorted_chunks([len(ids) for ids in flat], self.batch_size)
        pad_id, multiple = pad_id_of(self.service.encoder), 8 if self.gpu else 1  # CPU: padding is wasted work
        logits: list[np.ndarray | None] = [None] * len(flat)

        def run(chunk: list[int]) -> None:
            lane = self._free.get()
            try:
                rows = np.asarray(lane.logits(pad_batch([flat[i] for i in chunk], pad_id, multiple)))
            finally:
                self._free.put(lane)
            for index, row in zip(chunk, rows):
                logits[index] = row

        # The costliest batches first: the lanes then end the shard together, on small batches (any order gives the
        # same logits: each batch is computed alone).
        by_cost = sorted(chunks, key=lambda chunk: len(chunk) * max(len(flat[i]) for i in chunk), reverse=True)
        for done in [self._pool.submit(run, chunk) for chunk in by_cost]:
            done.result()
        return predictions_from(self.task, windowed, logits)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def processes_here(state) -> int:
    """Processes of accelerate's ``state`` on this machine, which share its cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))


def _to_gpu(backend, device: str) -> None:
    """The fp32 torch backend moved to ``device``, running under autocast in bf16 (fp16 where there is none)."""
    import torch

    backend.model.to(device)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @torch.inference_mode()
    def logits_of(batch: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {name: torch.from_numpy(array).to(device, non_blocking=True) for name, array in batch.items()}
        with torch.autocast("cuda", dtype=dtype):
            return backend.model(**inputs).logits.float().cpu().numpy()

    backend.logits = logits_of

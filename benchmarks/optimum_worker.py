"""The ``optimum`` ONNX Runtime dynamic-int8 path, as its documentation shows it, run in its own Python.

``optimum[onnxruntime]`` pins transformers 4.x, so it cannot share an environment with DistriNews (transformers
5). ``bench_inference.py --optimum-python VENV/bin/python`` starts this script in such an environment:

    python -m venv /tmp/optimum && /tmp/optimum/bin/pip install torch==2.13.0 "optimum[onnxruntime]"

It exports the model folder given on the command line with ``ORTModelForSequenceClassification(export=True)``,
quantizes it with ``ORTQuantizer`` and ``AutoQuantizationConfig.avx512_vnni(is_static=False)`` (dynamic int8,
the recipe optimum documents for this CPU), and wraps it in ``optimum.pipelines.pipeline``. Then it answers one
JSON line per request on stdin, ``{"text": ...}`` or ``{"texts": [...], "batch_size": N}``, with
``{"seconds": ..., "labels": [...]}``: the time is taken inside this process, around the pipeline call alone,
so the pipe to the benchmark costs nothing.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def main() -> int:
    model_dir, threads = Path(sys.argv[1]), int(sys.argv[2])
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import onnxruntime
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from optimum.pipelines import pipeline
    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="optimum-int8-"))
    exported = ORTModelForSequenceClassification.from_pretrained(model_dir, export=True)
    exported.save_pretrained(work / "fp32")
    quantizer = ORTQuantizer.from_pretrained(work / "fp32")
    quantizer.quantize(save_dir=work / "int8",
                       quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    model = ORTModelForSequenceClassification.from_pretrained(work / "int8", session_options=options)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, accelerator="ort")
    versions = {name: metadata.version(name) for name in ("optimum", "optimum-onnx", "transformers", "onnxruntime",
                                                            "torch") if _installed(name)}
    print(json.dumps({"ready": True, "versions": versions}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        texts = request.get("texts") or [request["text"]]
        started = time.perf_counter()
        if "texts" in request:
            outputs = classifier(texts, truncation=True, max_length=128, batch_size=request.get("batch_size", 1))
        else:
            outputs = [classifier(texts[0], truncation=True, max_length=128)[0]]
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "labels": [output["label"] for output in outputs]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

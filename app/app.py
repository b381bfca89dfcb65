"""The DistriNews Space: the package's web app (``distrinews.serving.web.create_app``) for the settings in the
environment. The Gradio demo is at ``/``, the JSON API under ``/api``, the Hugging Face inference protocol at
``POST /``, Prometheus metrics at ``/metrics``.

    MODEL_ID=USER/NAME uvicorn app.app:app --port 7860            # from the repository root
    MODEL_ID=runs/ag_news/model QUANTIZE=none uvicorn app.app:app  # a local folder, fp32 torch
    curl -s localhost:7860/api/predict -H 'content-type: application/json' -d '{"text": "Stocks rally"}'
    curl -s localhost:7860/ -H 'content-type: application/json' -d '{"inputs": "Stocks rally"}'

Settings come from the environment (``distrinews.serving.service.ServingConfig``: MODEL_ID, MODEL_REVISION,
QUANTIZE, MAX_BATCH_SIZE, MAX_WINDOWS, CORS_ALLOW_ORIGINS, MIN_CONFIDENCE, ...). No logic lives here.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from distrinews.core.errors import ServingConfigError
from distrinews.serving.service import ClassifierService, ServingConfig

# Gradio reads this when it is imported; its analytics would call out to a third party from every Space.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

try:
    config = ServingConfig.from_env()
except ServingConfigError as err:
    raise SystemExit(f"error: {err}") from None

# The model loads in a thread while the web stack below imports. Importing Gradio is ~4 s of Python holding the
# GIL; loading is mostly ONNX Runtime and hashing, which release it, so on 2 cores a waking Space is ready about
# one load time (~1.5 s) sooner.
_loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-model")
_loading = _loader.submit(ClassifierService.load, config)
_loader.shutdown(wait=False)

from distrinews.serving.web import create_app  # noqa: E402 - after the model load has started, see above

app = create_app(config, loading=_loading)

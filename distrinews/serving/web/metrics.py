"""``GET /metrics``: serving metrics in the Prometheus text format, exposed by ``prometheus_client``.

Requests by method, route and status and their latency are counted here, around every request; every label
comes from a fixed set (unknown methods and paths count as ``other``), so no request can add series.
Everything about the model's work is read at scrape time from the objects that already keep it, not from a
second set of counters: the micro-batcher's ``BatchStats`` (batches and their sizes, how long windows waited,
refusals, isolated failures, the current queue depth) and the service (texts classified, load time, the model's
id, revision and quantization). Each app has its own registry, so several apps in one process (tests) never share counts.

    scrape_configs:
      - job_name: distrinews
        static_configs: [{targets: ["127.0.0.1:7860"]}]      # metrics_path defaults to /metrics
"""

from __future__ import annotations

import time
from itertools import accumulate

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, disable_created_metrics, \
    generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..batching import QUEUE_WAIT_BOUNDS_S
from .state import ServingState

LATENCY_BOUNDS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
disable_created_metrics()  # a "_created" timestamp beside every counter only doubles the series here
OTHER_ROUTE = "other"  # the Gradio UI's many paths and unknown ones: one label, so the series stay few
# Any token is a method to the HTTP parser: anything else is counted as OTHER_METHOD, or each invented one
# would add series of its own.
METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})
OTHER_METHOD = "other"


class ServiceCollector:
    """The batcher's and the service's own statistics, read when Prometheus scrapes."""

    def __init__(self, state: ServingState):
        self.state = state

    def collect(self):
        service = self.state.service
        ready = GaugeMetricFamily("distrinews_model_ready", "1 once the model is loaded and warm, else 0.")
        ready.add_metric([], 0 if service is None else 1)
        yield ready
        if service is None:
            return
        stats, batcher = service.batcher.stats, service.batcher
        info = GaugeMetricFamily("distrinews_model_info", "The model served (always 1).",
                                 labels=["model_id", "revision", "quantization", "max_length", "max_windows"])
        info.add_metric([service.config.model_id, service.resolved_revision, service.quantization,
                         str(service.max_length), str(service.policy.max_windows)], 1)
        yield info
        yield GaugeMetricFamily("distrinews_model_load_seconds", "Seconds from start to a loaded, warm model.",
                                value=service.load_seconds)
        yield CounterMetricFamily("distrinews_texts_classified", "Texts classified, over every route.",
                                  value=service.texts_classified)
        yield GaugeMetricFamily("distrinews_queue_depth", "Windows waiting for a batch now.", value=batcher.waiting)
        yield CounterMetricFamily("distrinews_queue_refused_requests", "Requests refused with 429 (queue full).",
                                  value=stats.refused_requests)
        yield CounterMetricFamily("distrinews_isolated_batches", "Batches that raised and were rerun one window "
                                  "at a time.", value=stats.isolated_batches)
        yield CounterMetricFamily("distrinews_failed_windows", "Windows the model failed on even alone.",
                                  value=stats.failed_items)
        yield self._batch_sizes(stats, batcher.max_batch_size)
        yield self._queue_waits(stats)

    @staticmethod
    def _batch_sizes(stats, max_batch_size: int) -> HistogramMetricFamily:
        bounds = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b < max_batch_size] + [max_batch_size]
        counts = [sum(n for size, n in stats.batch_sizes.items() if size <= bound) for bound in bounds]
        buckets = [(str(float(b)), c) for b, c in zip(bounds, counts)] + [("+Inf", stats.batches)]
        return HistogramMetricFamily("distrinews_batch_size", "Windows per model call.", buckets=buckets,
                                     sum_value=stats.items)

    @staticmethod
    def _queue_waits(stats) -> HistogramMetricFamily:
        cumulative = list(accumulate(stats.queue_wait_counts))
        buckets = [(str(b), c) for b, c in zip(QUEUE_WAIT_BOUNDS_S, cumulative)] + [("+Inf", cumulative[-1])]
        return HistogramMetricFamily("distrinews_queue_wait_seconds", "How long windows waited for their batch.",
                                     buckets=buckets, sum_value=stats.queue_wait_seconds)


class ServingMetrics:
    """The app's registry: request counts and latencies by route, plus ``ServiceCollector``."""

    def __init__(self, state: ServingState, routes: set[str]):
        self.routes = routes
        self.registry = CollectorRegistry()
        self.requests = Counter("distrinews_http_requests", "HTTP requests by method, route and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("distrinews_http_request_duration_seconds", "Time to answer a request, by "
                                 "method and route.", ["method", "route"], buckets=LATENCY_BOUNDS_S,
                                 registry=self.registry)
        self.registry.register(ServiceCollector(state))

    def route_label(self, path: str) -> str:
        return path if path in self.routes else OTHER_ROUTE

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        route, method = self.route_label(path), method if method in METHODS else OTHER_METHOD
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def router(self) -> APIRouter:
        router = APIRouter()

        @router.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return router


class CountRequests:
    """ASGI middleware: every HTTP request counted with its status and timed (a failure that escapes as 500)."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.observe(scope["method"], scope["path"], status, time.perf_counter() - started)

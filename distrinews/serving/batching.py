"""An asyncio micro-batcher: items (the windows of texts) from concurrent requests share one model call.

One worker task takes the first waiting item, gathers more for at most ``max_wait_ms`` (or until
``max_batch_size``; no waiting at all right after an idle spell), and runs the batch in a single inference
thread, so the event loop keeps accepting requests and the cores are never split between two batches. While a
batch runs, new items queue up and form the next one, so batches grow with load by themselves; the wait only
matters when the server is idle. The one exception is a lone item with nothing else waiting: it runs on the
event loop itself, which is then busy for one single-window call (a few ms with int8) instead of paying for the
trip to the inference thread and back.

Batches are filled round-robin over the waiting requests, one item from each in turn, not first come first
served: a long article's many windows then share each batch with the headlines that arrive behind it, which
wait for at most one batch instead of for the whole article.

The queue is bounded in items: a request that does not fit is refused whole with ``QueueFull`` (HTTP 429)
before anything of it is queued, so memory stays bounded and every accepted request gets exactly one answer.
A batch that raises is run again one item at a time, so only the callers of the items that fail on their own
get an error (``InferenceFailed``, naming them); everyone who shared the batch still gets a result.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

from ..core.errors import InferenceFailed, QueueFull

log = logging.getLogger(__name__)

Result = TypeVar("Result")


QUEUE_WAIT_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class BatchStats:
    """What the batcher has done since it started (``/metrics`` reads it as it is)."""

    batches: int = 0
    items: int = 0  # the windows of texts, in the Space
    largest_batch: int = 0
    refused_requests: int = 0
    isolated_batches: int = 0  # batches that raised and were rerun one item at a time
    failed_items: int = 0
    batch_sizes: Counter = field(default_factory=Counter)  # items in a batch -> batches of that size
    batch_seconds: float = 0.0  # time spent running batches
    # how long items waited for their batch: counts per QUEUE_WAIT_BOUNDS_S bucket (the last: above them all)
    queue_wait_counts: list[int] = field(default_factory=lambda: [0] * (len(QUEUE_WAIT_BOUNDS_S) + 1))
    queue_wait_seconds: float = 0.0

    def record_batch(self, size: int, seconds: float, waits: Sequence[float]) -> None:
        self.batches += 1
        self.items += size
        self.largest_batch = max(self.largest_batch, size)
        self.batch_sizes[size] += 1
        self.batch_seconds += seconds
        for wait in waits:
            self.queue_wait_counts[bisect.bisect_left(QUEUE_WAIT_BOUNDS_S, wait)] += 1
            self.queue_wait_seconds += wait


class MicroBatcher(Generic[Result]):
    """Run ``run_batch(items) -> results`` (same length, same order) over items from many callers."""

    def __init__(self, run_batch: Callable[[list], Sequence[Result]], *, max_batch_size: int = 32,
                 max_wait_ms: float = 2.0, max_queue: int = 1024):
        if max_batch_size < 1 or max_queue < max_batch_size or max_wait_ms < 0:
            raise ValueError(f"need max_batch_size >= 1, max_queue >= max_batch_size and max_wait_ms >= 0; got "
                             f"{max_batch_size}, {max_queue}, {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._requests: deque[deque[_Waiting]] = deque()  # one deque of waiting items per request, in turn
        self._waiting = 0
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._seconds_per_item = 0.01  # running estimate, for Retry-After

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker = asyncio.create_task(self._serve(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for waiting in self._take(self._waiting):  # nobody is left waiting forever
            if not waiting.future.done():
                waiting.future.set_exception(RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._worker = self._arrived = self._executor = None

    @property
    def waiting(self) -> int:
        return self._waiting

    async def submit(self, items: Sequence, timing: dict[str, float] | None = None) -> list[Result]:
        """Results for ``items`` in order; raises ``QueueFull`` (nothing queued) when they do not fit, and
        ``InferenceFailed`` when ``run_batch`` raised for some of them. ``timing``, if given, receives the
        seconds its items waited for a batch (``queue``), their batches ran (``batch``) and the largest batch
        (``batch_size``)."""
        if self._arrived is None:
            raise RuntimeError("MicroBatcher.start() has not been awaited")
        if len(items) > self.max_queue:
            raise ValueError(f"{len(items)} items can never fit a queue of {self.max_queue}")
        if self._waiting + len(items) > self.max_queue:
            self.stats.refused_requests += 1
            retry_after = max(1, round(self._waiting * self._seconds_per_item + 0.5))
            raise QueueFull(self._waiting, self.max_queue, retry_after)
        loop = asyncio.get_running_loop()
        enqueued = time.perf_counter()  # not loop.time(): uvloop's clock counts whole milliseconds
        request = deque(_Waiting(item, loop.create_future(), enqueued) for item in items)
        futures = [waiting.future for waiting in request]
        if request:
            self._requests.append(request)
            self._waiting += len(request)
            self._arrived.set()
        outcomes: list[_Outcome] = await asyncio.gather(*futures)
        if timing is not None and outcomes:
            timing["queue"] = max(o.started for o in outcomes) - enqueued
            timing["batch"] = max(o.finished - o.started for o in outcomes)
            timing["batch_size"] = max(o.batch_size for o in outcomes)
        failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome.result, _Failure)]
        if failed:
            raise InferenceFailed(failed, outcomes[failed[0]].result.error)
        return [outcome.result for outcome in outcomes]

    def _take(self, room: int) -> list[_Waiting]:
        """Up to ``room`` waiting items, one from each waiting request in turn (round-robin)."""
        taken: list[_Waiting] = []
        while len(taken) < room and self._requests:
            request = self._requests.popleft()
            taken.append(request.popleft())
            if request:
                self._requests.append(request)
        self._waiting -= len(taken)
        return taken

    async def _items_arrive(self, timeout: float | None) -> bool:
        """Whether items are waiting, waiting at most ``timeout`` seconds (None: until some arrive)."""
        while not self._waiting:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        last_batch_size = 0
        while True:
            await self._items_arrive(None)
            batch = self._take(self.max_batch_size)
            # Waiting for company only pays when requests are arriving together: after a lone item the
            # server was idle, so the next item runs at once instead of paying max_wait in latency.
            deadline = loop.time() + (self.max_wait_s if last_batch_size > 1 else 0.0)
            while len(batch) < self.max_batch_size:
                remaining = deadline - loop.time()
                if not self._waiting and (remaining <= 0 or not await self._items_arrive(remaining)):
                    break
                batch += self._take(self.max_batch_size - len(batch))
            last_batch_size = len(batch)
            live = [waiting for waiting in batch if not waiting.future.done()]  # skip cancelled callers
            if live:
                await self._run_batch(live)

    async def _run_batch(self, live: list[_Waiting]) -> None:
        started = time.perf_counter()
        results = await self._run_isolating([waiting.item for waiting in live], alone_is_cheap=not self._waiting)
        finished = time.perf_counter()
        elapsed = finished - started
        self._seconds_per_item = 0.8 * self._seconds_per_item + 0.2 * elapsed / len(live)
        self.stats.record_batch(len(live), elapsed, [started - waiting.enqueued for waiting in live])
        for waiting, result in zip(live, results):
            if not waiting.future.done():
                waiting.future.set_result(_Outcome(result, started, finished, len(live)))

    async def _run_isolating(self, items: list, alone_is_cheap: bool = False) -> list:
        """``run_batch(items)``; if it raises, each item again on its own, so an item that fails only fails
        itself (its slot holds a ``_Failure``)."""
        try:
            results = await self._run(items, alone_is_cheap)
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
            return list(results)
        except Exception as err:  # noqa: BLE001 - contained to the items that cause it
            if len(items) == 1:
                log.exception("inference failed for one item of size %d", len(items[0]))
                self.stats.failed_items += 1
                return [_Failure(err)]
            log.warning("inference failed for a batch of %d items (%s: %s); running them one at a time",
                        len(items), type(err).__name__, err)
            self.stats.isolated_batches += 1
        return [(await self._run_isolating([item]))[0] for item in items]

    async def _run(self, items: list, alone_is_cheap: bool):
        if len(items) == 1 and alone_is_cheap:
            # A lone item at an idle server runs right here: handing it to the inference thread and back
            # costs two thread wake-ups (0.2-0.6 ms of a ~13 ms headline on this 2-core machine), and an
            # item arriving meanwhile would have waited for this call anyway (one model call at a time).
            return self.run_batch(items)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run_batch, items)


@dataclass
class _Waiting:
    """An item in the queue: what to run, whom to tell, and since when (``time.perf_counter``)."""

    item: object
    future: asyncio.Future
    enqueued: float


@dataclass
class _Outcome:
    """What a text's future holds: its result (or ``_Failure``) and when its batch ran (``time.perf_counter``)."""

    result: object
    started: float
    finished: float
    batch_size: int


@dataclass
class _Failure:
    """In a result slot: the error ``run_batch`` raised for this text alone."""

    error: BaseException

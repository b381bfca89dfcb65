"""An asyncio micro-batcher: items (the windows of texts) from concurrent requests share one model call.

Each lane (a ``run_batch`` with its own inference thread: in the Space, an ONNX Runtime session with one thread
per core it owns) has a worker task that takes the first waiting item, gathers more for at most ``max_wait_ms``
(or until ``max_batch_size``; no waiting at all right after an idle spell), and runs the batch in the lane's
thread, so the event loop keeps accepting requests. While batches run, new items queue up and form the next
ones, so batches grow with load by themselves; the wait only matters when the server is idle. The one exception
is a lone item with nothing else waiting and every lane idle: it runs on the event loop itself, through
``run_alone`` (in the Space, the session it timed fastest at start), instead of paying for the trip to a lane and back.

Why lanes: on a CPU, several small batches side by side keep the cores busier than one batch split across them
(DistilBERT int8 on 2 cores: two 1-thread sessions 131 texts/s, one 2-thread session 117, in batches of 2),
and a lane's batch is small, so it waits less for company and pads less.

Batches are filled round-robin over the waiting requests, one item from each in turn, not first come first
served: a long article's many windows then share each batch with the headlines that arrive behind it, which
wait for at most one batch instead of for the whole article. Given ``size_of``, a batch is the first item in
that order plus the waiting items nearest it in size, from the next few turns: padding a batch to its longest
item is work thrown away (batches of 4 real headlines: 106 texts/s in arrival order, 128 grouped by length).

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


# A batch of n is chosen among the next GROUPING_TURNS * n items in round-robin order: enough choice to group
# lengths, few enough turns that no item is passed over for long.
GROUPING_TURNS = 4

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
    """Run ``run_batch(items) -> results`` (same length, same order) over items from many callers.

    ``lanes``: the batch runners that work side by side, each in a thread of its own (default: ``run_batch``
    alone). ``run_alone``: what runs a lone item on the event loop (default: ``run_batch``). ``size_of``: an
    item's size, to group items of like size in a batch (default: batches in round-robin order)."""

    def __init__(self, run_batch: Callable[[list], Sequence[Result]], *, max_batch_size: int = 32,
                 max_wait_ms: float = 2.0, max_queue: int = 1024,
                 lanes: Sequence[Callable[[list], Sequence[Result]]] = (),
                 run_alone: Callable[[list], Sequence[Result]] | None = None,
                 size_of: Callable[[object], int] | None = None):
        if max_batch_size < 1 or max_queue < max_batch_size or max_wait_ms < 0:
            raise ValueError(f"need max_batch_size >= 1, max_queue >= max_batch_size and max_wait_ms >= 0; got "
                             f"{max_batch_size}, {max_queue}, {max_wait_ms}")
        self.lanes = list(lanes) or [run_batch]
        self.run_alone = run_alone or run_batch
        self.size_of = size_of
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._requests: deque[deque[_Waiting]] = deque()  # one deque of waiting items per request, in turn
        self._waiting = 0
        self._busy_lanes = 0
        self._arrived: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._seconds_per_item = 0.01  # running estimate over all lanes, for Retry-After

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"inference-{lane}")
                           for lane in range(len(self.lanes))]
        self._workers = [asyncio.create_task(self._serve(lane), name=f"micro-batcher-{lane}")
                         for lane in range(len(self.lanes))]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            try:
                await worker
            except asyncio.CancelledError:
                pass
        for waiting in self._take(self._waiting):  # nobody is left waiting forever
            if not waiting.future.done():
                waiting.future.set_exception(RuntimeError("server shutting down"))
        for executor in self._executors:
            executor.shutdown(wait=True)
        self._arrived, self._workers, self._executors = None, [], []

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
        """Up to ``room`` waiting items: the next in round-robin order (one item from each waiting request in
        turn), and with ``size_of`` the rest nearest it in size among the next ``GROUPING_TURNS * room``."""
        turns = self._round_robin(room if self.size_of is None else GROUPING_TURNS * room)
        if len(turns) > room:  # only with size_of: choose the room - 1 nearest in size to the first
            first = self.size_of(turns[0][2].item)
            nearest = sorted(range(1, len(turns)), key=lambda i: abs(self.size_of(turns[i][2].item) - first))
            turns = [turns[i] for i in sorted([0, *nearest[:room - 1]])]
        for request, position, _ in sorted(turns, key=lambda turn: -turn[1]):  # later positions first
            del request[position]
        served = {id(request) for request, _, _ in turns}
        # Requests that got a turn go to the back, in their order; emptied ones leave.
        kept = [request for request in self._requests if id(request) not in served]
        self._requests = deque(kept + [request for request in self._requests if id(request) in served and request])
        self._waiting -= len(turns)
        return [waiting for _, _, waiting in turns]

    def _round_robin(self, limit: int) -> list[tuple[deque, int, _Waiting]]:
        """The next ``limit`` waiting items in round-robin order, as (request, position in it, item)."""
        turns: list[tuple[deque, int, _Waiting]] = []
        for position in range(max(map(len, self._requests), default=0)):
            for request in self._requests:
                if position < len(request):
                    turns.append((request, position, request[position]))
                    if len(turns) == limit:
                        return turns
        return turns

    async def _items_arrive(self, timeout: float | None) -> bool:
        """Whether items are waiting, waiting at most ``timeout`` seconds (None: until some arrive)."""
        while not self._waiting:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def _serve(self, lane: int) -> None:
        loop = asyncio.get_running_loop()
        last_batch_size = 0
        while True:
            await self._items_arrive(None)
            room = self._share()
            batch = self._take(room)
            # Waiting for company only pays when requests are arriving together: after a lone item the
            # server was idle, so the next item runs at once instead of paying max_wait in latency.
            deadline = loop.time() + (self.max_wait_s if last_batch_size > 1 else 0.0)
            while len(batch) < room:
                remaining = deadline - loop.time()
                if not self._waiting and (remaining <= 0 or not await self._items_arrive(remaining)):
                    break
                batch += self._take(room - len(batch))
            last_batch_size = len(batch)
            live = [waiting for waiting in batch if not waiting.future.done()]  # skip cancelled callers
            if live:
                self._busy_lanes += 1
                try:
                    await self._run_batch(live, lane)
                finally:
                    self._busy_lanes -= 1

    def _share(self) -> int:
        """How many items a lane takes: one lane, up to ``max_batch_size``; of several, each its share of what
        waits now, so that the others get work too and every batch has items of like size to choose from."""
        if len(self.lanes) == 1:
            return self.max_batch_size
        return max(1, min(self.max_batch_size, -(-self._waiting // len(self.lanes))))

    async def _run_batch(self, live: list[_Waiting], lane: int) -> None:
        started = time.perf_counter()
        # Alone: nothing waits and no other lane runs, so the event loop may take every core for one item.
        alone = len(live) == 1 and not self._waiting and self._busy_lanes == 1
        results = await self._run_isolating([waiting.item for waiting in live], lane, alone)
        finished = time.perf_counter()
        elapsed = finished - started
        self._seconds_per_item = 0.8 * self._seconds_per_item + 0.2 * elapsed / len(live) / len(self.lanes)
        self.stats.record_batch(len(live), elapsed, [started - waiting.enqueued for waiting in live])
        for waiting, result in zip(live, results):
            if not waiting.future.done():
                waiting.future.set_result(_Outcome(result, started, finished, len(live)))

    async def _run_isolating(self, items: list, lane: int, alone: bool = False) -> list:
        """The lane's ``run_batch(items)``; if it raises, each item again on its own, so an item that fails only
        fails itself (its slot holds a ``_Failure``)."""
        try:
            results = await self._run(items, lane, alone)
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
        return [(await self._run_isolating([item], lane))[0] for item in items]

    async def _run(self, items: list, lane: int, alone: bool):
        if alone:
            # A lone item at an idle server runs right here: handing it to a lane's thread and back costs two
            # thread wake-ups (0.2-0.6 ms of a ~13 ms headline on a 2-core machine), and an item arriving
            # meanwhile finds a lane free as soon as this returns.
            return self.run_alone(items)
        return await asyncio.get_running_loop().run_in_executor(self._executors[lane], self.lanes[lane], items)


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

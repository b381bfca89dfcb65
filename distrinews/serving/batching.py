"""An asyncio micro-batcher: texts from concurrent requests share one model call.

One worker task takes the first waiting text, gathers more for at most ``max_wait_ms`` (or until
``max_batch_size``; no waiting at all right after an idle spell), and runs the batch in a single inference
thread, so the event loop keeps accepting requests and the cores are never split between two batches. While a
batch runs, new texts queue up and form the next one, so batches grow with load by themselves; the wait only
matters when the server is idle. The one exception is a lone text with nothing else waiting: it runs on the
event loop itself, which is then busy for one single-text call (a few ms with int8) instead of paying for the
trip to the inference thread and back.

The queue is bounded in texts: a request that does not fit is refused whole with ``QueueFull`` (HTTP 429)
before anything of it is queued, so memory stays bounded and every accepted request gets exactly one answer.
A batch that raises is run again one text at a time, so only the callers of the texts that fail on their own
get an error (``InferenceFailed``, naming them); everyone who shared the batch still gets a result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

from ..core.errors import InferenceFailed, QueueFull

log = logging.getLogger(__name__)

Result = TypeVar("Result")


@dataclass
class BatchStats:
    batches: int = 0
    texts: int = 0
    largest_batch: int = 0
    refused_requests: int = 0
    isolated_batches: int = 0  # batches that raised and were rerun one text at a time
    failed_texts: int = 0


class MicroBatcher(Generic[Result]):
    """Run ``run_batch(texts) -> results`` (same length, same order) over texts from many callers."""

    def __init__(self, run_batch: Callable[[list[str]], Sequence[Result]], *, max_batch_size: int = 32,
                 max_wait_ms: float = 2.0, max_queue: int = 1024):
        if max_batch_size < 1 or max_queue < max_batch_size or max_wait_ms < 0:
            raise ValueError(f"need max_batch_size >= 1, max_queue >= max_batch_size and max_wait_ms >= 0; got "
                             f"{max_batch_size}, {max_queue}, {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[str, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._seconds_per_text = 0.01  # running estimate, for Retry-After

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker = asyncio.create_task(self._serve(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        while self._queue is not None and not self._queue.empty():  # nobody is left waiting forever
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._worker = self._queue = self._executor = None

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, texts: Sequence[str], timing: dict[str, float] | None = None) -> list[Result]:
        """Results for ``texts`` in order; raises ``QueueFull`` (nothing queued) when they do not fit, and
        ``InferenceFailed`` when ``run_batch`` raised for some of them. ``timing``, if given, receives the
        seconds its texts waited for a batch (``queue``), their batches ran (``batch``) and the largest batch
        (``batch_size``)."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() has not been awaited")
        if len(texts) > self.max_queue:
            raise ValueError(f"{len(texts)} texts can never fit a queue of {self.max_queue}")
        if self.waiting + len(texts) > self.max_queue:
            self.stats.refused_requests += 1
            retry_after = max(1, round(self.waiting * self._seconds_per_text + 0.5))
            raise QueueFull(self.waiting, self.max_queue, retry_after)
        loop = asyncio.get_running_loop()
        futures = []
        enqueued = time.perf_counter()  # not loop.time(): uvloop's clock counts whole milliseconds
        for text in texts:  # no await in this loop: the capacity check above still holds when it ends
            future = loop.create_future()
            self._queue.put_nowait((text, future))
            futures.append(future)
        outcomes: list[_Outcome] = await asyncio.gather(*futures)
        if timing is not None:
            timing["queue"] = max(o.started for o in outcomes) - enqueued
            timing["batch"] = max(o.finished - o.started for o in outcomes)
            timing["batch_size"] = max(o.batch_size for o in outcomes)
        failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome.result, _Failure)]
        if failed:
            raise InferenceFailed(failed, outcomes[failed[0]].result.error)
        return [outcome.result for outcome in outcomes]

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        last_batch_size = 0
        while True:
            batch = [await self._queue.get()]
            # Waiting for company only pays when requests are arriving together: after a lone text the
            # server was idle, so the next text runs at once instead of paying max_wait in latency.
            deadline = loop.time() + (self.max_wait_s if last_batch_size > 1 else 0.0)
            while len(batch) < self.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            last_batch_size = len(batch)
            live = [(text, future) for text, future in batch if not future.done()]  # skip cancelled callers
            if not live:
                continue
            started = time.perf_counter()
            results = await self._run_isolating([text for text, _ in live], alone_is_cheap=self._queue.empty())
            finished = time.perf_counter()
            elapsed = finished - started
            self._seconds_per_text = 0.8 * self._seconds_per_text + 0.2 * elapsed / len(live)
            self.stats.batches += 1
            self.stats.texts += len(live)
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            for (_, future), result in zip(live, results):
                if not future.done():
                    future.set_result(_Outcome(result, started, finished, len(live)))

    async def _run_isolating(self, texts: list[str], alone_is_cheap: bool = False) -> list:
        """``run_batch(texts)``; if it raises, each text again on its own, so a text that fails only fails
        itself (its slot holds a ``_Failure``)."""
        try:
            results = await self._run(texts, alone_is_cheap)
            if len(results) != len(texts):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(texts)} texts")
            return list(results)
        except Exception as err:  # noqa: BLE001 - contained to the texts that cause it
            if len(texts) == 1:
                log.exception("inference failed for one text of %d characters", len(texts[0]))
                self.stats.failed_texts += 1
                return [_Failure(err)]
            log.warning("inference failed for a batch of %d texts (%s: %s); running them one at a time",
                        len(texts), type(err).__name__, err)
            self.stats.isolated_batches += 1
        return [(await self._run_isolating([text]))[0] for text in texts]

    async def _run(self, texts: list[str], alone_is_cheap: bool):
        if len(texts) == 1 and alone_is_cheap:
            # A lone text at an idle server runs right here: handing it to the inference thread and back
            # costs two thread wake-ups (0.2-0.6 ms of a ~13 ms headline on this 2-core machine), and a
            # text arriving meanwhile would have waited for this call anyway (one model call at a time).
            return self.run_batch(texts)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run_batch, texts)


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

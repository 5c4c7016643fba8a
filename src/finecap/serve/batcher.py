"""Dynamic batching: concurrent requests with the same options become one model call.

Batched beam search captions an image several times faster than one at a time
(BENCHMARKS.md), so a service that runs each request alone wastes most of its CPU or GPU.

The `MicroBatcher` keeps one FIFO per batch key (the model and the decoding options: only
requests that decode alike can share a batch). Its single consumer takes the key whose first
request is oldest and runs it with up to `max_batch` requests of that key as one call in its
one worker thread, so the event loop keeps accepting and parsing uploads while the model runs.

Before it runs a batch that is not full, it waits for requests *on their way* (announced with
`incoming()` while their upload is read and decoded), until the batch's first request is
`max_wait_s` old. With none on their way it runs at once: a lone client pays no wait, while
under load whatever arrives during a model call forms the next batch.

    batcher = MicroBatcher(run_batch, max_batch=32, max_wait_s=0.01, max_queue=256)
    task = asyncio.create_task(batcher.run())       # the consumer, for the app's lifetime
    with batcher.incoming():                        # in each request handler:
        item = await read_and_decode(request)       #   a batch being formed waits for it
    result = await batcher.submit(key, item)
    await batcher.close()

`run_batch(key, items) -> results` (one per item, in order) runs in the worker thread; an
exception it raises fails every request of that batch. `submit` raises `QueueFullError`
(with a Retry-After estimate) when `max_queue` requests are already waiting; a request whose
`submit` is cancelled (its handler's timeout) leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFullError(RuntimeError):
    """`max_queue` requests are waiting already; `retry_after` is a guess in whole seconds."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"{waiting} requests are waiting for the model; retry in {retry_after} s")
        self.retry_after = retry_after


class BatcherClosedError(RuntimeError):
    """The service is shutting down."""


@dataclass(eq=False)  # jobs are told apart by identity (`job in queue`)
class _Job:
    key: Hashable
    item: Any
    future: asyncio.Future
    arrived: float  # loop.time() when submitted


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    seconds: float = 0.0  # spent in run_batch, over all batches
    last_seconds: float = 0.0  # the latest batch's (for Retry-After)
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[Hashable, list[Any]], list[Any]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queues: dict[Hashable, deque[_Job]] = {}  # key -> its waiting jobs, oldest first
        self._waiting = 0  # jobs in all queues
        self._incoming = 0  # requests announced (uploading, decoding), not yet submitted
        self._arrival = asyncio.Event()
        self._closed = False
        # One thread: batches run one after another, each using all the cores torch is given.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="finecap-model")

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Announce a request that will `submit` soon: a batch being formed waits for it."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            self._arrival.set()  # submitted or failed: either way a waiting batch re-checks

    async def submit(self, key: Hashable, item: Any) -> Any:
        """Queue `item` under `key`; return its result once its batch has run."""
        if self._closed:
            raise BatcherClosedError("the service is shutting down")
        if self._waiting >= self.max_queue:
            raise QueueFullError(self._waiting, self.retry_after())
        loop = asyncio.get_running_loop()
        job = _Job(key, item, loop.create_future(), loop.time())
        self._queues.setdefault(key, deque()).append(job)
        self._waiting += 1
        self._arrival.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._forget(job)  # timed out or the client left: do not run it
            raise

    async def run_in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` in the model thread (between batches): a warm-up, a reload."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one batch's worth: at least 1."""
        batches = math.ceil(self._waiting / self.max_batch)
        return max(1, math.ceil(batches * self.stats.last_seconds))

    async def run(self) -> None:
        """The consumer: form batches and run them, until `close`."""
        loop = asyncio.get_running_loop()
        while (batch := await self._next_batch(loop)) is not None:
            key, jobs = batch
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self.run_batch, key, [job.item for job in jobs]
                )
            except Exception as err:  # a bug or a model failure: every job of the batch fails
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            finally:
                self._record(len(jobs), time.perf_counter() - start)
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():  # its handler may have timed out meanwhile
                    job.future.set_result(result)

    async def close(self) -> None:
        """Stop taking requests; fail the waiting ones; let a running batch finish."""
        self._closed = True
        for queue in self._queues.values():
            for job in queue:
                if not job.future.done():
                    job.future.set_exception(BatcherClosedError("the service is shutting down"))
        self._queues.clear()
        self._waiting = 0
        self._arrival.set()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    async def _next_batch(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[Hashable, list[_Job]] | None:
        """The next batch to run (None once closed)."""
        while not self._closed:
            if not self._waiting:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            # The key whose first request is oldest: no key starves behind a busier one.
            key = min(self._queues, key=lambda k: self._queues[k][0].arrived)
            queue = self._queues[key]
            deadline = queue[0].arrived + self.max_wait_s
            while len(queue) < self.max_batch and self._incoming and not self._closed:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                if self._queues.get(key) is not queue:  # its requests were all cancelled
                    break
            if self._queues.get(key) is not queue or self._closed:
                continue
            jobs = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            self._waiting -= len(jobs)
            if not queue:
                del self._queues[key]
            return key, jobs
        return None

    def _forget(self, job: _Job) -> None:
        queue = self._queues.get(job.key)
        if queue is None or job not in queue:
            return  # already taken into a batch (its result will be dropped)
        queue.remove(job)
        self._waiting -= 1
        if not queue:
            del self._queues[job.key]

    def _record(self, size: int, seconds: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.images += size
        stats.seconds += seconds
        stats.last_seconds = seconds
        stats.sizes[size] = stats.sizes.get(size, 0) + 1

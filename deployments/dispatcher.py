"""The dispatcher: claims due entries of the store's durable queues and reconciles each with its flow run.

Every executor runs one; the entries' leases keep two dispatchers off one entry. What reconciling does is the
job source's business (jobs.py); this loop only claims, reconciles, and gives the entry back for later or
lets it go. Every `sweep_every` it also sweeps the runs whose job is over but which were left unfinished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from deployments.jobs import Job, JobSource

log = logging.getLogger("fulfillment.dispatcher")

MAX_ERROR_DELAY = timedelta(seconds=60)


class Dispatcher:
    def __init__(self, sources: list[JobSource], worker_id: str, *, lease: timedelta, poll_seconds: float,
                 capacity: Callable[[], int], sweep: Callable[[], Awaitable[None]], sweep_every: timedelta):
        """`lease`: how long a claimed entry is this dispatcher's (a paused one holds its entries that long).
        `capacity`: how many runs this process's executor can take now. The dispatcher claims no more entries
        than that, so the runs it creates start at once here; a backlog waits in the store, not as a crowd of
        scheduled runs that every executor's poll would have to page through."""
        self._sources = sources
        self._lease = lease
        self._worker_id = worker_id
        self._poll_seconds = poll_seconds
        self._capacity = capacity
        self._sweep = sweep
        self._sweep_every = sweep_every.total_seconds()

    async def run(self, stop: asyncio.Event) -> None:
        swept = time.monotonic()
        while not stop.is_set():
            if time.monotonic() - swept >= self._sweep_every:
                await self._sweep_safely()
                swept = time.monotonic()
            claimed = 0
            for source in self._sources:
                if self._capacity() <= 0:
                    break
                jobs = await self._claim(source)
                claimed += len(jobs)
                await asyncio.gather(*(self._reconcile(source, job) for job in jobs))
            if not claimed:
                await wait(stop, self._poll_seconds)

    async def _sweep_safely(self) -> None:
        try:
            await self._sweep()
        except Exception:  # noqa: BLE001 - the next sweep looks again
            log.exception("could not sweep the runs nothing watches")

    async def _claim(self, source: JobSource) -> list[Job]:
        try:
            return await source.claim(self._worker_id, self._capacity(), self._lease)
        except Exception:  # noqa: BLE001 - the store may be briefly unavailable; keep polling
            log.exception("could not claim jobs", extra={"source": type(source).__name__})
            return []

    async def _reconcile(self, source: JobSource, job: Job) -> None:
        error = ""
        try:
            look_again = await source.reconcile(job)
        except Exception as failure:  # noqa: BLE001 - whatever went wrong, the entry is looked at again later
            look_again = min(timedelta(seconds=2 ** job.attempts), MAX_ERROR_DELAY)
            error = repr(failure)
            log.exception("could not reconcile a job; retrying", extra={
                "job": job.key, "attempt": job.attempts, "retry_in_s": look_again.total_seconds()})
        try:
            if look_again is None:
                await source.done(job.key)
            else:
                await source.release(self._worker_id, job.key, error, look_again)
        except Exception:  # noqa: BLE001 - the entry's lease runs out and it is claimed again
            log.exception("could not hand a job back", extra={"job": job.key})


async def wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)

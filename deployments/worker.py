"""The worker: turns the store's durable queues into Prefect flow runs and executes them in this process.

For each job (an order in the saga outbox, an inventory event in the inbox) it creates, or finds by
idempotency key, the job's flow run of the deployment declared in `prefect.yaml` (taking over a run that a
dead worker left behind) and executes it here with `run_flow_async`: no subprocess per flow run, which would
cost about a second of CPU each on 2 cores. Several jobs run at once (option `WorkerConcurrency`). Leases are
renewed while a job runs; if this process dies they run out and the jobs are claimed again, and the
idempotent steps make the re-run safe. Run with `python -m deployments.worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from datetime import timedelta
from uuid import UUID

from prefect import flow_engine
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import AsyncClientContext
from prefect.flow_engine import run_flow_async
from prefect.flows import Flow
from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK,
    temporary_settings,
)
from prefect.states import Pending

from deployments.jobs import InventoryEventJobs, Job, JobSource, SagaJobs
from deployments.registration import register_deployments, result_storage_block
from flows import runtime
from fulfillment.bootstrap import Container, bootstrap
from fulfillment.logs import configure_logging
from fulfillment.settings import load_dotenv_file
from fulfillment.telemetry import PREFECT_TRACEPARENT_LABEL, configure_tracing, shutdown_tracing

log = logging.getLogger("fulfillment.worker")

LEASE = timedelta(seconds=30)
MAX_RETRY_DELAY = timedelta(seconds=60)
SHUTDOWN_GRACE = timedelta(seconds=10)


class Worker:
    def __init__(self, sources: list[JobSource], deployments: dict[str, tuple[UUID, Flow]],
                 client: PrefectClient, *, concurrency: int, poll_seconds: float):
        self._sources = sources
        self._deployments = {name: (deployment_id, _named_by_us(flow))
                             for name, (deployment_id, flow) in deployments.items()}
        self._client = client
        self._concurrency = concurrency
        self._poll_seconds = poll_seconds
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._in_flight: dict[tuple[JobSource, str], asyncio.Task[None]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        log.info("worker started", extra={"worker_id": self._worker_id, "concurrency": self._concurrency})
        renewer = asyncio.create_task(self._renew_leases(stop))
        while not stop.is_set():
            started = 0
            for source in self._sources:
                free = self._concurrency - len(self._in_flight)
                for job in await self._claim(source, free) if free > 0 else []:
                    if (source, job.key) in self._in_flight:  # its lease ran out while it runs here
                        continue
                    self._in_flight[source, job.key] = asyncio.create_task(self._execute(source, job))
                    started += 1
            if started == 0 or len(self._in_flight) >= self._concurrency:
                await _wait(stop, self._poll_seconds)
        await self._drain()
        renewer.cancel()

    async def _claim(self, source: JobSource, limit: int) -> list[Job]:
        try:
            return await source.claim(self._worker_id, limit, LEASE)
        except Exception:  # noqa: BLE001 - the store may be briefly unavailable; keep polling
            log.exception("could not claim jobs", extra={"source": type(source).__name__})
            return []

    async def _execute(self, source: JobSource, job: Job) -> None:
        deployment_id, flow = self._deployments[job.deployment]
        try:
            completed = True
            if await source.needs_run(job):
                flow_run = await self._claimed_flow_run(deployment_id, job)
                await source.started(job, str(flow_run.id))
                state = await run_flow_async(flow, flow_run=flow_run, parameters=job.parameters,
                                             return_type="state")
                completed = state.is_completed()
                log.info("flow run finished", extra={"job": job.key, "flow_run": job.run_name,
                                                     "flow_run_id": str(flow_run.id), "state": state.name})
            await source.done(job.key, completed)
        except Exception as error:  # noqa: BLE001 - whatever went wrong, the job is retried later
            delay = min(timedelta(seconds=2 ** job.attempts), MAX_RETRY_DELAY)
            log.exception("flow run could not run; retrying", extra={
                "job": job.key, "attempt": job.attempts, "retry_in_s": delay.total_seconds()})
            await source.release(self._worker_id, job.key, repr(error), delay)
        finally:
            self._in_flight.pop((source, job.key), None)

    async def _claimed_flow_run(self, deployment_id: UUID, job: Job) -> FlowRun:
        """The job's one flow run (created on first use), claimed for this worker."""
        flow_run = await self._client.create_flow_run_from_deployment(
            deployment_id, parameters=job.parameters, name=job.run_name, tags=list(job.tags),
            idempotency_key=job.key,
            labels={PREFECT_TRACEPARENT_LABEL: job.trace_parent} if job.trace_parent else None)
        if flow_run.state_type is StateType.SCHEDULED:
            return flow_run  # the engine moves it to Running; only a run outside the outbox could race us
        # We hold the job's lease, so no other worker runs it now: a run left behind by a dead worker
        # (Running, Crashed, ...) is taken over rather than waited for.
        await self._client.set_flow_run_state(flow_run.id, Pending(), force=True)
        return await self._client.read_flow_run(flow_run.id)

    async def _renew_leases(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _wait(stop, LEASE.total_seconds() / 3)
            for source in self._sources:
                keys = [key for owner, key in self._in_flight if owner is source]
                try:
                    await source.renew(self._worker_id, keys, LEASE)
                except Exception:  # noqa: BLE001 - try again at the next tick, well before the lease ends
                    log.exception("could not renew leases")

    async def _drain(self) -> None:
        """On shutdown: let the jobs in flight finish for a while, then stop them and hand them back at once,
        so the next worker resumes them (every step is idempotent)."""
        if not self._in_flight:
            return
        log.info("waiting for flow runs in flight", extra={"count": len(self._in_flight)})
        _, unfinished = await asyncio.wait(self._in_flight.values(), timeout=SHUTDOWN_GRACE.total_seconds())
        stopped = [owner_key for owner_key, task in self._in_flight.items() if task in unfinished]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        for source, key in stopped:
            await source.release(self._worker_id, key, "worker stopped", timedelta(0))
        log.warning("jobs handed back", extra={"keys": [key for _, key in stopped]})


def _named_by_us(flow: Flow) -> Flow:
    """The flow without its run-name template: the worker names each run when it creates it, and the engine
    would otherwise rename the run to the same name through the API, once per run."""
    unnamed = flow.with_options()
    unnamed.flow_run_name = None
    return unnamed


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def serve() -> None:
    container = bootstrap()
    runtime.install(container)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    _skip_suspension_observers()
    try:
        # One API client for the worker and every flow and task run it executes: Prefect reuses the client
        # of an enclosing context instead of opening (and building a TLS context for) one per run.
        async with AsyncClientContext.get_or_create() as client_context:
            deployments = await register_deployments()
            worker = Worker(_sources(container), deployments, client_context.client,
                            concurrency=container.settings.worker_concurrency,
                            poll_seconds=container.settings.outbox_poll_seconds)
            # The heartbeat only matters to detect a dead runner; the leases do that here. Naming the result
            # storage spares each run a lookup of the server's default through the API.
            with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                                     PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: await result_storage_block()}):
                await worker.run(stop)
    finally:
        await container.aclose()


def _skip_suspension_observers() -> None:
    """For each run of a deployment, Prefect starts a thread with its own event loop, API client and events
    websocket, only to notice a request to suspend the run. Sagas are never suspended (they are cancelled
    through the order service and compensate), and on 2 cores those threads cost a third of the worker's
    CPU (profile in BENCHMARKS.md), so the worker's runs go without them."""
    flow_engine.observe_flow_run_suspension = lambda *args, **kwargs: contextlib.nullcontext()


def _sources(container: Container) -> list[JobSource]:
    return [SagaJobs(container.outbox, container.orders, container.failures),
            InventoryEventJobs(container.inventory_events)]


def main() -> None:
    load_dotenv_file()
    configure_logging()
    configure_tracing("order-saga-worker")
    try:
        asyncio.run(serve())
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()

"""The saga executor: a Prefect worker of the `order-saga` work pool that runs each flow run in this process.

Prefect decides what runs: the executor polls the pool for scheduled runs (so a paused pool, a paused work
queue and the pool's concurrency limit are honoured by the server), skips runs of a paused deployment, and
claims each run by proposing `Pending` through Prefect's orchestration rules — a run is claimed once, by one
executor. It then runs the flow in-process with `run_flow_async`: no subprocess per run, which would cost
about a second of CPU each on 2 cores. It heartbeats to the pool, so the UI shows it online and the
deployments Ready, and it turns the UI's Cancel (a run going `Cancelling`) into a cancellation of the order.

Beside it, the dispatcher (dispatcher.py, jobs.py) turns the store's outbox and inbox into flow runs and keeps
each run in step with its order or event. Any number of executors may run against one store and one Prefect
server (`order-saga worker` starts one more). Run with `python -m deployments.worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import AsyncClientContext
from prefect.exceptions import Abort
from prefect.flow_engine import run_flow_async
from prefect.flows import Flow
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK,
    temporary_settings,
)
from prefect.states import Pending, State
from prefect.utilities.engine import propose_state

from deployments.dispatcher import Dispatcher, wait
from deployments.jobs import InventoryEventJobs, PrefectRuns, SagaJobs
from deployments.prefect_patches import skip_suspension_observers
from deployments.registration import ensure_work_pool, register_deployments, result_storage_block
from flows import runtime
from fulfillment.bootstrap import Container, bootstrap
from fulfillment.domain import InvalidTransition
from fulfillment.logs import configure_logging
from fulfillment.settings import load_dotenv_file
from fulfillment.telemetry import PREFECT_API_CALLS, configure_tracing, shutdown_tracing

log = logging.getLogger("fulfillment.worker")

HEARTBEAT = timedelta(seconds=10)
PAUSE_CHECK = timedelta(seconds=2)
CANCEL_CHECK = timedelta(seconds=1)
IDLE_POLL = timedelta(seconds=1)
SHUTDOWN_GRACE = timedelta(seconds=10)
AfterRun = Callable[[FlowRun, State], Awaitable[None]]
OnCancelling = Callable[[FlowRun], Awaitable[None]]


class SagaWorker:
    def __init__(self, client: PrefectClient, pool: str, flows: dict[UUID, Flow], *, name: str, concurrency: int,
                 after_run: AfterRun, on_cancelling: OnCancelling):
        self.name = name
        self._client = client
        self._pool = pool
        self._flows = {deployment_id: _named_by_us(flow) for deployment_id, flow in flows.items()}
        self._concurrency = concurrency
        self._after_run = after_run
        self._on_cancelling = on_cancelling
        self._in_flight: dict[UUID, tuple[FlowRun, asyncio.Task[None]]] = {}
        self._paused: set[UUID] = set()
        self._work = asyncio.Event()

    def wake(self) -> None:
        """New runs may be waiting (the dispatcher just created some): poll now rather than at the next tick."""
        self._work.set()

    async def run(self, stop: asyncio.Event) -> None:
        log.info("executor started", extra={"worker": self.name, "work_pool": self._pool,
                                            "concurrency": self._concurrency})
        helpers = [asyncio.create_task(loop(stop)) for loop in (self._heartbeats, self._pauses, self._cancellations)]
        try:
            while not stop.is_set():
                self._work.clear()
                await self._poll()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), timeout=IDLE_POLL.total_seconds())
        finally:
            await self._drain()
            for helper in helpers:
                helper.cancel()

    async def _poll(self) -> None:
        if len(self._in_flight) >= self._concurrency:
            return
        try:
            scheduled = await self._client.get_scheduled_flow_runs_for_work_pool(
                self._pool, scheduled_before=datetime.now(UTC))
        except Exception:  # noqa: BLE001 - Prefect briefly unreachable: poll again
            log.exception("could not poll the work pool", extra={"work_pool": self._pool})
            return
        for response in scheduled:
            run = response.flow_run
            if len(self._in_flight) >= self._concurrency:
                break
            if run.id in self._in_flight or run.deployment_id not in self._flows or run.deployment_id in self._paused:
                continue
            self._in_flight[run.id] = (run, asyncio.create_task(self._execute(run)))

    async def _execute(self, run: FlowRun) -> None:
        try:
            if not await self._claim(run):
                return
            state = await run_flow_async(self._flows[run.deployment_id], flow_run=run, parameters=run.parameters,
                                         return_type="state")
            log.info("flow run finished", extra={"flow_run": run.name, "flow_run_id": str(run.id),
                                                 "state": state.name})
            await self._after_run(run, state)
        except Abort as taken_over:
            log.warning("flow run %s stopped here: %s", run.name, taken_over, extra={"flow_run_id": str(run.id)})
        except Exception:  # noqa: BLE001 - the dispatcher looks at the run again and re-drives it
            log.exception("flow run could not run", extra={"flow_run": run.name, "flow_run_id": str(run.id)})
        finally:
            self._in_flight.pop(run.id, None)
            self.wake()

    async def _claim(self, run: FlowRun) -> bool:
        """Scheduled → Pending through the orchestration rules: only one executor's proposal is accepted, and a
        deployment's concurrency limit may hold the run back (AwaitingConcurrencySlot)."""
        try:
            state = await propose_state(self._client, Pending(), flow_run_id=run.id)
        except Abort:
            return False
        if not state.is_pending():
            return False
        run.state = state
        return True

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._client.send_worker_heartbeat(self._pool, self.name,
                                                         heartbeat_interval_seconds=HEARTBEAT.total_seconds())
            except Exception:  # noqa: BLE001 - the pool shows the executor offline until the next one lands
                log.warning("could not send a worker heartbeat", exc_info=True)
            await wait(stop, HEARTBEAT.total_seconds())

    async def _pauses(self, stop: asyncio.Event) -> None:
        """Runs of a paused deployment stay scheduled (and go Late) until it is resumed."""
        while not stop.is_set():
            try:
                deployments = [await self._client.read_deployment(deployment_id) for deployment_id in self._flows]
                self._paused = {deployment.id for deployment in deployments if deployment.paused}
            except Exception:  # noqa: BLE001 - keep the last known pauses
                log.warning("could not read the deployments", exc_info=True)
            await wait(stop, PAUSE_CHECK.total_seconds())

    async def _cancellations(self, stop: asyncio.Event) -> None:
        """The UI's Cancel moves a running run to Cancelling: the order is cancelled, so the saga stops at its
        next step boundary, compensates, and the run ends Cancelled."""
        while not stop.is_set():
            await wait(stop, CANCEL_CHECK.total_seconds())
            if not self._in_flight:
                continue
            try:
                cancelling = await self._client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=list(self._in_flight)),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING]))))
                for run in cancelling:
                    await self._on_cancelling(run)
            except Exception:  # noqa: BLE001 - try again at the next tick
                log.warning("could not look for cancelled runs", exc_info=True)

    async def _drain(self) -> None:
        """On shutdown: let the runs in flight finish for a while, then stop them; the dispatcher of another
        executor (or of this one, restarted) resumes them, since every step is idempotent."""
        tasks = [task for _, task in self._in_flight.values()]
        if not tasks:
            return
        log.info("waiting for flow runs in flight", extra={"count": len(tasks)})
        _, unfinished = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE.total_seconds())
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        if unfinished:
            log.warning("flow runs stopped at shutdown; they are resumed elsewhere", extra={"count": len(unfinished)})


class CancelledIsNoError(logging.Filter):
    """Prefect's engine logs every final state but Completed at ERROR; a cancelled order is an outcome the
    customer or an operator asked for, and must not page anyone. Set on the `prefect.flow_runs` logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.getMessage().startswith("Finished in state Cancelled"):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _named_by_us(flow: Flow) -> Flow:
    """The flow without its run-name template: the dispatcher names each run when it creates it, and the engine
    would otherwise rename the run to the same name through the API, once per run."""
    unnamed = flow.with_options()
    unnamed.flow_run_name = None
    return unnamed


UUID_SEGMENT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def count_api_call(request: httpx.Request) -> None:
    """Counts each Prefect API call by method and route (`order_saga_prefect_api_calls_total`, in BENCHMARKS.md)."""
    route = UUID_SEGMENT.sub(":id", request.url.path.split("/api/", 1)[-1])
    PREFECT_API_CALLS.labels(f"{request.method} {route}").inc()


class Executor:
    """The executor process: the worker and the dispatcher over one container and one Prefect client."""

    def __init__(self, container: Container, client: PrefectClient):
        self._container = container
        self._client = client
        self._name = f"{socket.gethostname()}:{os.getpid()}"

    async def run(self, stop: asyncio.Event) -> None:
        settings = self._container.settings
        await ensure_work_pool(self._client, settings.work_pool)
        deployments = await register_deployments(self._client, settings.work_pool)
        runs = PrefectRuns(self._client, {name: deployment_id for name, (deployment_id, _) in deployments.items()})
        saga_jobs = SagaJobs(self._container.outbox, self._container.orders, self._container.failures, runs,
                             max_attempts=settings.max_job_attempts, claim_seconds=settings.saga_claim_seconds)
        event_jobs = InventoryEventJobs(self._container.inventory_events, runs,
                                        max_attempts=settings.max_job_attempts, claim_seconds=settings.saga_claim_seconds)
        saga_deployment = deployments[SagaJobs.deployment][0]

        async def after_run(run: FlowRun, state: State) -> None:
            if run.deployment_id == saga_deployment and run.parameters.get("order_id"):
                await saga_jobs.after_run(run.parameters["order_id"], str(run.id))
            elif run.deployment_id != saga_deployment and run.idempotency_key:
                await event_jobs.after_run(run.idempotency_key, state.is_completed())

        async def on_cancelling(run: FlowRun) -> None:
            if run.deployment_id == saga_deployment and run.parameters.get("order_id"):
                try:
                    await self._container.order_service.cancel(run.parameters["order_id"])
                except InvalidTransition as refused:
                    log.info("cancel of flow run %s: %s", run.name, refused)

        worker = SagaWorker(self._client, settings.work_pool, {d: flow for d, flow in deployments.values()},
                            name=self._name, concurrency=settings.worker_concurrency, after_run=after_run,
                            on_cancelling=on_cancelling)
        dispatcher = Dispatcher([saga_jobs, event_jobs], self._name, lease=timedelta(seconds=settings.saga_claim_seconds),
                                poll_seconds=settings.outbox_poll_seconds, batch=settings.worker_concurrency,
                                on_dispatched=worker.wake)
        dispatching = asyncio.create_task(dispatcher.run(stop))
        try:
            await worker.run(stop)
        finally:
            await dispatching


async def run_executor(container: Container, stop: asyncio.Event) -> None:
    """Runs an executor over `container` against the Prefect API of its settings until `stop` is set."""
    runtime.install(container)
    skip_suspension_observers()
    logging.getLogger("prefect.flow_runs").addFilter(CancelledIsNoError())
    api = {PREFECT_API_URL: container.settings.prefect_api_url}
    with temporary_settings(api):
        # One API client for the executor and every flow and task run it executes: Prefect reuses the client
        # of an enclosing context instead of opening (and building a TLS context for) one per run.
        async with AsyncClientContext(httpx_settings={"event_hooks": {"request": [count_api_call]}}) as context:
            # The flow-run heartbeat only matters to detect a dead runner; the order claims do that here. Naming
            # the result storage spares each run a lookup of the server's default through the API.
            with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                                     PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: await result_storage_block()}):
                await Executor(container, context.client).run(stop)


async def serve() -> None:
    container = bootstrap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await run_executor(container, stop)
    finally:
        await container.aclose()


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

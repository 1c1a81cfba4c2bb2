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
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import WorkerFlowRunResponse
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
from fulfillment.domain import Actor, InvalidTransition, SagaStopped, StepRefused
from fulfillment.logs import configure_logging
from fulfillment.settings import load_dotenv_file, load_settings
from fulfillment.telemetry import PREFECT_API_CALLS, configure_tracing, shutdown_tracing

log = logging.getLogger("fulfillment.worker")

HEARTBEAT = timedelta(seconds=10)
PAUSE_CHECK = timedelta(seconds=3)
CANCEL_CHECK = timedelta(seconds=1)
IDLE_POLL = timedelta(seconds=2)
BUSY_POLL = timedelta(seconds=0.25)  # while the pool has a backlog: batches of runs, not a poll per run
SHUTDOWN_GRACE = timedelta(seconds=10)
SWEEP_EVERY_CLAIMS = 2  # how often, in claim lengths, the dispatcher sweeps runs left unfinished
OPERATOR = Actor.trusted("prefect-ui")  # whoever may cancel a run in Prefect may cancel its order
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
        self._in_flight: dict[UUID, asyncio.Task[None]] = {}
        self._cancelled: set[UUID] = set()  # in-flight runs whose cancellation was passed on already
        self._paused: set[UUID] = set()
        self._restricted: set[UUID] = set()  # paused, or with a concurrency limit the server must apply
        self._pool_unrestricted = False  # not paused, no concurrency limit: runs may be taken without a poll
        self._work = asyncio.Event()

    def takes_now(self, deployment_id: UUID) -> bool:
        return (self._pool_unrestricted and deployment_id in self._flows and deployment_id not in self._restricted
                and self.free_slots() > 0)

    def start_claimed(self, run: FlowRun) -> None:
        """A run this process's dispatcher created already claimed (`Pending`): it starts here at once."""
        self._start(run, claimed=True)

    def offer(self, run: FlowRun) -> None:
        """A scheduled run this process's dispatcher created: claimed through a `Pending` proposal, at once if
        there is room and nothing for the server to decide first, else by the next poll."""
        if self._pool_unrestricted and self._runnable(run) and self.free_slots() > 0:
            self._start(run)
        else:
            self._work.set()

    def free_slots(self) -> int:
        return self._concurrency - len(self._in_flight)

    async def run(self, stop: asyncio.Event) -> None:
        log.info("executor started", extra={"worker": self.name, "work_pool": self._pool,
                                            "concurrency": self._concurrency})
        helpers = [asyncio.create_task(loop(stop)) for loop in (self._heartbeats, self._pauses, self._cancellations)]
        try:
            while not stop.is_set():
                self._work.clear()
                found = await self._poll()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), timeout=(BUSY_POLL if found else IDLE_POLL).total_seconds())
        finally:
            await self._drain()
            for helper in helpers:
                helper.cancel()

    async def _poll(self) -> bool:
        """Starts the pool's due runs this executor has room for; True if there were any."""
        free = self.free_slots()
        if free <= 0:
            return True
        try:
            scheduled = await self._scheduled_runs(limit=free + len(self._paused) * free)
        except Exception:  # noqa: BLE001 - Prefect briefly unreachable: poll again
            log.exception("could not poll the work pool", extra={"work_pool": self._pool})
            return False
        for run in scheduled:
            if self.free_slots() <= 0:
                break
            if self._runnable(run):
                self._start(run)
        return bool(scheduled)

    def _runnable(self, run: FlowRun) -> bool:
        return run.id not in self._in_flight and run.deployment_id in self._flows and run.deployment_id not in self._paused

    def _start(self, run: FlowRun, *, claimed: bool = False) -> None:
        self._in_flight[run.id] = asyncio.create_task(self._execute(run, claimed=claimed))

    async def _scheduled_runs(self, limit: int) -> list[FlowRun]:
        """The pool's runs that are due, at most `limit`: the same endpoint as the client's
        `get_scheduled_flow_runs_for_work_pool`, with the endpoint's `limit`, which that method does not pass.
        Without it every poll of a backlog returns (and the server serialises, and this process parses) every
        waiting run."""
        response = await self._client.request(
            "POST", "/work_pools/{name}/get_scheduled_flow_runs", path_params={"name": self._pool},
            json={"scheduled_before": datetime.now(UTC).isoformat(), "limit": limit})
        response.raise_for_status()
        return [WorkerFlowRunResponse.model_validate(entry).flow_run for entry in response.json()]

    async def _execute(self, run: FlowRun, *, claimed: bool) -> None:
        try:
            if not (claimed or await self._claim(run)):
                return
            state = await run_flow_async(self._flows[run.deployment_id], flow_run=run, parameters=run.parameters,
                                         return_type="state")
            log.info("flow run finished", extra={"flow_run": run.name, "flow_run_id": str(run.id),
                                                 "state": state.name, "worker": self.name})
            await self._after_run(run, state)
        except Abort as taken_over:
            log.warning("flow run %s stopped here: %s", run.name, taken_over, extra={"flow_run_id": str(run.id)})
        except Exception:  # noqa: BLE001 - the dispatcher looks at the run again and re-drives it
            log.exception("flow run could not run", extra={"flow_run": run.name, "flow_run_id": str(run.id)})
        finally:
            self._in_flight.pop(run.id, None)
            self._cancelled.discard(run.id)

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
        """Runs of a paused deployment stay scheduled (and go Late) until it is resumed; while the pool is paused
        or limited, every run goes through the server's poll, which applies both."""
        while not stop.is_set():
            try:
                deployments = [await self._client.read_deployment(deployment_id) for deployment_id in self._flows]
                self._paused = {deployment.id for deployment in deployments if deployment.paused}
                self._restricted = self._paused | {deployment.id for deployment in deployments
                                                   if deployment.global_concurrency_limit}
                pool = await self._client.read_work_pool(self._pool)
                self._pool_unrestricted = not pool.is_paused and pool.concurrency_limit is None
            except Exception:  # noqa: BLE001 - keep the last known pauses
                log.warning("could not read the deployments and the work pool", exc_info=True)
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
                    if run.id not in self._cancelled:
                        await self._on_cancelling(run)
                        self._cancelled.add(run.id)
            except Exception:  # noqa: BLE001 - try again at the next tick
                log.warning("could not look for cancelled runs", exc_info=True)

    async def _drain(self) -> None:
        """On shutdown: let the runs in flight finish for a while, then stop them; the dispatcher of another
        executor (or of this one, restarted) resumes them, since every step is idempotent."""
        tasks = list(self._in_flight.values())
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


class RefusalIsNoError(logging.Filter):
    """A step the downstream refused (OutOfStock, PaymentDeclined, ShipmentRejected) fails its task run, which
    Prefect's task engine logs at ERROR, with the traceback, then as its final state: a business outcome, not a
    fault, so WARNING lines without a traceback, in the console and in the UI alike. Set on `prefect.task_runs`."""

    REFUSALS = (StepRefused, SagaStopped)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._is_refusal(record):
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True

    def _is_refusal(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            return isinstance(record.exc_info[1], self.REFUSALS)
        # the final state names the exception: "Finished in state Failed('... exception StepRefused: ...')"
        message = record.getMessage()
        return message.startswith("Finished in state Failed") and any(
            f"exception {kind.__name__}:" in message for refusal in self.REFUSALS for kind in _with_subclasses(refusal))


def _with_subclasses(kind: type) -> list[type]:
    return [kind, *(sub for subclass in kind.__subclasses__() for sub in _with_subclasses(subclass))]


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
        self._saga_deployment = deployments[SagaJobs.deployment][0]
        worker = SagaWorker(self._client, settings.work_pool, {d: flow for d, flow in deployments.values()},
                            name=self._name, concurrency=settings.worker_concurrency, after_run=self._after_run,
                            on_cancelling=self._on_cancelling)
        runs = PrefectRuns(self._client, {name: deployment_id for name, (deployment_id, _) in deployments.items()},
                           worker)
        self._saga_jobs = SagaJobs(self._container.outbox, self._container.orders, self._container.failures, runs,
                                   max_attempts=settings.max_job_attempts, claim_seconds=settings.saga_claim_seconds)
        self._event_jobs = InventoryEventJobs(self._container.inventory_events, runs,
                                              max_attempts=settings.max_job_attempts,
                                              claim_seconds=settings.saga_claim_seconds)
        claim = timedelta(seconds=settings.saga_claim_seconds)
        dispatcher = Dispatcher([self._saga_jobs, self._event_jobs], self._name,
                                lease=timedelta(seconds=settings.saga_claim_seconds),
                                poll_seconds=settings.outbox_poll_seconds, capacity=worker.free_slots,
                                sweep=self._saga_jobs.sweep, sweep_every=SWEEP_EVERY_CLAIMS * claim)
        dispatching = asyncio.create_task(dispatcher.run(stop))
        try:
            await worker.run(stop)
        finally:
            await dispatching

    async def _after_run(self, run: FlowRun, state: State) -> None:
        if run.deployment_id == self._saga_deployment and run.parameters.get("order_id"):
            await self._saga_jobs.after_run(run.parameters["order_id"], str(run.id))
        elif run.deployment_id != self._saga_deployment and run.idempotency_key:
            await self._event_jobs.after_run(run.idempotency_key, state.is_completed())

    async def _on_cancelling(self, run: FlowRun) -> None:
        if run.deployment_id == self._saga_deployment and run.parameters.get("order_id"):
            try:
                await self._container.order_service.cancel(run.parameters["order_id"], actor=OPERATOR)
            except InvalidTransition as refused:
                log.info("cancel of flow run %s: %s", run.name, refused)


async def run_executor(container: Container, stop: asyncio.Event) -> None:
    """Runs an executor over `container` against the Prefect API of its settings until `stop` is set."""
    runtime.install(container)
    skip_suspension_observers()
    logging.getLogger("prefect.flow_runs").addFilter(CancelledIsNoError())
    logging.getLogger("prefect.task_runs").addFilter(RefusalIsNoError())
    api = {PREFECT_API_URL: container.settings.prefect_api_url}
    with temporary_settings(api):
        async with counted_client() as client:
            # The flow-run heartbeat only matters to detect a dead runner; the order claims do that here. Naming
            # the result storage spares each run a lookup of the server's default through the API.
            with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                                     PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: await result_storage_block()}):
                await Executor(container, client).run(stop)


@contextlib.asynccontextmanager
async def counted_client() -> AsyncIterator[PrefectClient]:
    """One API client for the executor and every flow and task run it executes, its calls counted.

    Prefect's engines reuse the client of the enclosing `AsyncClientContext` and otherwise open one per flow and
    task run, each building a TLS context (a third of the executor's CPU when that happened). They reuse it only
    if it was made without `httpx_settings`, so the counting hook goes on the httpx client inside it afterwards
    (`PrefectClient._client`, a private attribute: tests/integration/test_executor.py fails if it moves)."""
    async with AsyncClientContext() as context:
        context.client._client.event_hooks["request"].append(count_api_call)
        yield context.client


async def serve() -> None:
    container = bootstrap(load_settings())
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

"""The store's durable queues, kept in step with Prefect: each entry has one flow run, and the run mirrors it.

The saga outbox holds an entry for every order that is not terminal; the inventory-event inbox one for every
event not yet applied. The dispatcher (dispatcher.py) claims due entries and asks their source to `reconcile`
each with its flow run: create the run (idempotency key = the entry's key, so a crash between the 202 and
this point still gives exactly one run), wait for an executor to run it, take it over when its executor is
gone, re-drive it with capped backoff when it ended early, park it after `MaxJobAttempts`, and once the work
is over let the entry go. Executors call `after_run` when a run ends, so the happy path needs no second look.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from uuid import UUID, uuid4

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateDetails, StateType
from prefect.exceptions import Abort, ObjectNotFound
from prefect.states import AwaitingRetry, Cancelled, Completed, Crashed, Failed, Pending, State
from prefect.utilities.engine import propose_state

from fulfillment.domain import CancellationTooLate, InvalidTransition, Order, OrderNotFound, OrderStatus
from fulfillment.ports import FailureAnnouncer, InventoryEventInbox, OrderRepository, SagaOutbox
from fulfillment.service.saga_runs import report
from fulfillment.telemetry import PARKED_JOBS, PREFECT_TRACEPARENT_LABEL

log = logging.getLogger("fulfillment.dispatcher")

MAX_BACKOFF = timedelta(minutes=5)
PARKED_FOR = timedelta(days=7)
ACTIVE = frozenset({StateType.PENDING, StateType.RUNNING, StateType.CANCELLING})
UNFINISHED = [StateType.PENDING, StateType.RUNNING]  # claimed; a Scheduled run waits for an executor (or a Retry)
SWEEP_LIMIT = 200  # Prefect's page limit; what a sweep leaves, the next one takes


@dataclass(frozen=True)
class RunRequest:
    """What the flow run of a job looks like when it is created."""

    deployment: str
    name: str
    parameters: dict[str, Any]
    tags: tuple[str, ...] = ()
    trace_parent: str | None = None


@dataclass(frozen=True)
class Job:
    key: str
    attempts: int  # claims of the entry so far
    request: RunRequest | None = None  # its run, when the entry alone says what it is (an inventory event)


class JobSource(Protocol):
    async def claim(self, worker_id: str, limit: int, lease: timedelta) -> list[Job]: ...

    async def release(self, worker_id: str, key: str, error: str, retry_in: timedelta) -> None: ...

    async def reconcile(self, job: Job) -> timedelta | None:
        """Brings the job's flow run in step with it; None when the job is over, else when to look again."""
        ...

    async def done(self, key: str) -> None: ...


def backoff(run_count: int) -> timedelta:
    return min(timedelta(seconds=2 ** run_count), MAX_BACKOFF)


class LocalExecutor(Protocol):
    """This process's executor, as the dispatcher sees it."""

    def takes_now(self, deployment_id: UUID) -> bool:
        """Whether a new run of the deployment may start here at once: a free slot, and nothing for the server to
        decide first (pool not paused nor limited, deployment not paused nor limited)."""
        ...

    def start_claimed(self, run: FlowRun) -> None: ...

    def offer(self, run: FlowRun) -> None:
        """A scheduled run: claimed through a `Pending` proposal when the executor gets to it."""
        ...


class PrefectRuns:
    """The flow runs of the jobs, through Prefect's API and its orchestration rules (no forced transitions)."""

    def __init__(self, client: PrefectClient, deployments: dict[str, Any], executor: LocalExecutor):
        self._client = client
        self._deployments = deployments  # deployment name -> id
        self._executor = executor

    async def ensure(self, key: str, request: RunRequest) -> FlowRun:
        """The job's one flow run: created on first use, found by its idempotency key afterwards.

        When this process's executor can start it at once, the run is created already `Pending`, claimed by its
        creation: the idempotency key lets only one creation happen, and the transition id proves it was this
        one (a second `create` returns the first run with the first state). That spares the server a `Pending`
        proposal per saga, a third of the state changes of a run. Otherwise it is created `Scheduled`, and the
        executors claim it by proposing `Pending`, which the server decides with every rule that applies."""
        claim = Pending(state_details=StateDetails(transition_id=uuid4()))
        take_now = self._executor.takes_now(self._deployments[request.deployment])
        run = await self._create(key, request, claim if take_now else None)
        if take_now and run.state and run.state.state_details.transition_id == claim.state_details.transition_id:
            self._executor.start_claimed(run)
        elif run.state_type is StateType.SCHEDULED:
            self._executor.offer(run)
        return run

    async def record(self, key: str, request: RunRequest, final: State) -> FlowRun:
        """The job's one flow run, for a job that ended without running (an order cancelled while it waited):
        created in its final state, so every order still has its run in the UI."""
        return await self._create(key, request, final)

    async def _create(self, key: str, request: RunRequest, state: State | None) -> FlowRun:
        labels = {PREFECT_TRACEPARENT_LABEL: request.trace_parent} if request.trace_parent else None
        return await self._client.create_flow_run_from_deployment(
            self._deployments[request.deployment], parameters=request.parameters, name=request.name,
            tags=list(request.tags), idempotency_key=key, labels=labels, state=state)

    async def unfinished(self, deployment: str, *, untouched_for: timedelta) -> list[FlowRun]:
        """The deployment's runs claimed by an executor (Pending, Running) whose state has not changed for
        `untouched_for`."""
        runs = await self._client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED))),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self._deployments[deployment]])),
            limit=SWEEP_LIMIT)
        before = datetime.now(UTC) - untouched_for
        return [run for run in runs if run.state and run.state.timestamp and run.state.timestamp < before]

    async def read(self, flow_run_id: str) -> FlowRun | None:
        try:
            return await self._client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return None

    async def propose(self, run: FlowRun, state: State) -> None:
        try:
            await propose_state(self._client, state, flow_run_id=run.id)
        except Abort as refused:  # the run moved on meanwhile (another dispatcher, an executor)
            log.info("flow run %s: %s not accepted: %s", run.id, state.name, refused)

    async def take_over(self, run: FlowRun, why: str) -> None:
        """A run whose executor is gone: Crashed, then AwaitingRetry for another executor."""
        log.warning("flow run %s (%s): %s; it is run again", run.id, run.name, why)
        await self.propose(run, Crashed(message=why))
        await self.propose(run, AwaitingRetry(message=f"resumed after: {why}"))

    async def retry_later(self, run: FlowRun, delay: timedelta, why: str) -> None:
        await self.propose(run, AwaitingRetry(scheduled_time=datetime.now(UTC) + delay,
                                              message=f"{why}; run again in {delay.total_seconds():g}s"))

    async def mirror(self, run: FlowRun, order: Order) -> None:
        """Ends a run of a terminal order as the order ended, unless it already has."""
        final = mirrored_state(order)
        if run.state_type is not final.type:
            await self.propose(run, final)

    async def redrive(self, run: FlowRun, *, stalled: str, ended_early: str, max_attempts: int,
                      look_again: timedelta) -> timedelta:
        """A run its job still needs: taken over when it is active but its executor stopped (`stalled`), run
        again with capped backoff when it ended early, parked after `max_attempts` runs. Returns when to look
        again."""
        if run.state_type in ACTIVE:
            if run.state and run.state.timestamp and datetime.now(UTC) - run.state.timestamp < look_again:
                return look_again  # just claimed by an executor that has not started it yet
            await self.take_over(run, stalled)
            return look_again
        if run.run_count >= max_attempts:
            return park(run, ended_early, max_attempts)
        delay = backoff(run.run_count)
        await self.retry_later(run, delay, ended_early)
        return delay + look_again


def mirrored_state(order: Order) -> State:
    """The final state a run of a terminal order shows."""
    message = report(order).message
    return {OrderStatus.COMPLETED: Completed, OrderStatus.CANCELLED: Cancelled}.get(order.status, Failed)(
        message=message)


class SagaJobs:
    """The saga outbox. The order, not the run, says whether the saga is over; the run mirrors it."""

    deployment = "order-saga"

    def __init__(self, outbox: SagaOutbox, orders: OrderRepository, failures: FailureAnnouncer, runs: PrefectRuns,
                 *, max_attempts: int, claim_seconds: float):
        self._outbox, self._orders, self._failures, self._runs = outbox, orders, failures, runs
        self._max_attempts = max_attempts
        self._look_again = timedelta(seconds=claim_seconds)

    async def claim(self, worker_id: str, limit: int, lease: timedelta) -> list[Job]:
        return [Job(entry.order_id, entry.attempts)
                for entry in await self._outbox.claim(worker_id, limit=limit, lease=lease)]

    async def release(self, worker_id: str, key: str, error: str, retry_in: timedelta) -> None:
        await self._outbox.release(worker_id, key, error=error, retry_in=retry_in)

    async def done(self, key: str) -> None:
        await self._outbox.done(key)

    async def reconcile(self, job: Job) -> timedelta | None:
        try:
            order = await self._orders.get(job.key)
        except OrderNotFound:
            return None
        run = await self._runs.read(order.flow_run_id) if order.flow_run_id else None
        if run is None and order.status.is_terminal:  # cancelled before its run was made (or the run is gone)
            run = await self._runs.record(order.id, self.run_request(order), mirrored_state(order))
            await self._orders.update(order.id, lambda o: o.attach_flow_run(str(run.id)))
            await self._announce(order)
            return None
        if run is None:  # not created yet, or gone from Prefect: one for the order now
            run = await self._runs.ensure(order.id, self.run_request(order))
            await self._orders.update(order.id, lambda o: o.attach_flow_run(str(run.id)))
            return self._look_again
        if run.state_type in (StateType.CANCELLING, StateType.CANCELLED):
            order = await self._cancel(order)
        if order.status.is_terminal:
            await self._runs.mirror(run, order)
            await self._announce(order)
            return None
        return await self._drive(order, run)

    def run_request(self, order: Order) -> RunRequest:
        return RunRequest(self.deployment, f"order-{order.id}", {"order_id": order.id}, (order.customer_id,),
                          order.trace_parent)

    async def after_run(self, order_id: str, flow_run_id: str) -> None:
        """Called by the executor when a run for the order ended: an order that is over lets its entry go. Only
        the order's own run speaks for it (a Quick run of a finished order announces nothing again)."""
        try:
            order = await self._orders.get(order_id)
        except OrderNotFound:
            return
        if order.flow_run_id != flow_run_id:
            await self._mirror_own_run(order)
            return
        if order.status.is_terminal:
            await self._announce(order)
            await self._outbox.done(order_id)
        elif order.needs_manual_intervention:
            await self._failures.order_failed(order)

    async def _mirror_own_run(self, order: Order) -> None:
        """Another run (a Quick run) finished the order: its own run, maybe waiting to be re-run, must not run
        again (it would take the failed order for an operator's Retry); it ends as the order did."""
        own = await self._runs.read(order.flow_run_id) if order.status.is_terminal and order.flow_run_id else None
        if own is not None:
            await self._runs.mirror(own, order)

    async def _announce(self, order: Order) -> None:
        """A failed order is announced before its entry goes: if announcing fails, the job is tried again."""
        if order.status is OrderStatus.FAILED:
            await self._failures.order_failed(order)

    async def _cancel(self, order: Order) -> Order:
        """The run was cancelled (the UI's Cancel): the order is cancelled as `cancelOrder` would."""
        try:
            return await self._orders.update(order.id, lambda o: o.request_cancellation())
        except CancellationTooLate as late:
            log.info("%s", late, extra={"order_id": order.id})
        except InvalidTransition:
            pass
        return await self._orders.get(order.id)

    async def _drive(self, order: Order, run: FlowRun) -> timedelta:
        now = datetime.now(UTC)
        if run.state_type is StateType.SCHEDULED:
            return self._look_again  # waiting for an executor (a paused pool or deployment keeps it waiting)
        if order.claim is not None and order.claim.expires_at > now:
            return order.claim.expires_at - now + timedelta(seconds=1)
        look_again = await self._runs.redrive(
            run, stalled=f"its executor stopped renewing its claim on order {order.id}",
            ended_early=report(order).message, max_attempts=self._max_attempts, look_again=self._look_again)
        return await self._unless_finished_meanwhile(order.id, look_again)

    async def sweep(self) -> None:
        """Ends the runs nothing watches any more as their orders ended. A job is over once its order is, but its
        run may still be rescheduled or claimed around then (a takeover racing the late executor's last write,
        an executor claiming it just before it is mirrored); if that run's executor then dies, no entry is left
        to bring the run in step. Such a run is Pending or Running, untouched for a while, and its order is over
        (a live executor ends such a run in moments). Scheduled runs are left alone: an executor will take them,
        and an operator's Retry of a failed order waits as one, maybe behind a paused pool."""
        runs = await self._runs.unfinished(self.deployment, untouched_for=2 * self._look_again)
        orders = await self._orders.get_many([run.parameters["order_id"] for run in runs])
        for run, order in zip(runs, orders, strict=True):
            if order is not None and order.status.is_terminal and order.flow_run_id == str(run.id):
                log.warning("flow run %s (%s) was left %s by an executor that stopped; it ends as its order did",
                            run.id, run.name, run.state_name, extra={"flow_run_id": str(run.id)})
                await self._runs.mirror(run, order)

    async def _unless_finished_meanwhile(self, order_id: str, look_again: timedelta) -> timedelta | None:
        """A late executor may finish the order while its run is re-driven: its claim ran out but nobody took it,
        so its writes still land. Its run, just rescheduled, would then have nothing to do, and once that
        executor lets the entry go nothing would watch the run (an executor killed while running it would leave
        it Running for good). So the order is read again, and a finished one's run ends as the order did."""
        order = await self._orders.get(order_id)
        if not order.status.is_terminal:
            return look_again
        if order.flow_run_id and (run := await self._runs.read(order.flow_run_id)) is not None:
            await self._runs.mirror(run, order)
        await self._announce(order)
        return None


def park(run: FlowRun, why: str, max_attempts: int) -> timedelta:
    PARKED_JOBS.labels(run.name.split("-", 1)[0]).inc()
    log.error("flow run %s (%s) parked after %d runs: %s; Retry it in the Prefect UI once the cause is fixed",
              run.id, run.name, max_attempts, why, extra={"flow_run_id": str(run.id)})
    return PARKED_FOR


class InventoryEventJobs:
    """The inventory-event inbox: an event is over when its run completed (or an operator cancelled it)."""

    deployment = "inventory-event"

    def __init__(self, inbox: InventoryEventInbox, runs: PrefectRuns, *, max_attempts: int, claim_seconds: float):
        self._inbox, self._runs = inbox, runs
        self._max_attempts = max_attempts
        self._look_again = timedelta(seconds=claim_seconds)

    async def claim(self, worker_id: str, limit: int, lease: timedelta) -> list[Job]:
        return [Job(event.event_id, attempts, RunRequest(
                    self.deployment, f"inventory-{event.product_id}", {"event": _jsonable(asdict(event))},
                    (event.event_type,), event.trace_parent))
                for event, attempts in await self._inbox.claim(worker_id, limit=limit, lease=lease)]

    async def release(self, worker_id: str, key: str, error: str, retry_in: timedelta) -> None:
        await self._inbox.release(worker_id, key, error=error, retry_in=retry_in)

    async def done(self, key: str) -> None:
        await self._inbox.done(key)

    async def reconcile(self, job: Job) -> timedelta | None:
        assert job.request is not None, "claimed events carry their run"
        run = await self._runs.ensure(job.key, job.request)
        state = run.state_type
        if state is StateType.COMPLETED:
            return None
        if state is StateType.CANCELLED:
            log.warning("inventory event %s dropped: its run was cancelled", job.key)
            return None
        if state is StateType.SCHEDULED:
            return self._look_again
        return await self._runs.redrive(
            run, stalled=f"its executor stopped while applying inventory event {job.key}",
            ended_early=f"inventory event {job.key} was not applied: {run.state.message if run.state else ''}",
            max_attempts=self._max_attempts,
            look_again=self._look_again)

    async def after_run(self, event_id: str, completed: bool) -> None:
        if completed:
            await self.done(event_id)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value.isoformat() if isinstance(value, datetime) else value for name, value in values.items()}


"""The executor (Prefect worker + dispatcher) in this process, against a real Prefect server and the SQLite store:
dispatch through the work pool, claim renewal, takeover of a dead executor's run, drain, parking, pauses.

The Prefect API is read with blocking calls (`PrefectUI`) only while no executor runs in the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from deployments import worker
from deployments.jobs import Job, PrefectRuns, SagaJobs
from deployments.worker import run_executor
from fulfillment.bootstrap import bootstrap
from fulfillment.domain import Actor, OrderStatus, Step, TransientFault
from fulfillment.telemetry import PARKED_JOBS, PREFECT_API_CALLS
from tests.e2e.prefect_ui import PrefectUI

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings(settings, prefect_api, tmp_path):
    with temporary_settings({PREFECT_HOME: tmp_path / "prefect"}):
        yield settings.model_copy(update={"prefect_api_url": prefect_api, "outbox_poll_seconds": 0.05,
                                          "saga_claim_seconds": 1.5})


@pytest.fixture
def ui(prefect_api) -> PrefectUI:
    return PrefectUI(prefect_api)


@contextlib.asynccontextmanager
async def executor(settings, **overrides):
    """An executor over this test's store, stopped (and drained) when the block ends."""
    container = bootstrap(settings, **overrides)
    stop = asyncio.Event()
    running = asyncio.create_task(run_executor(container, stop))
    try:
        yield container
    finally:
        stop.set()
        await running
        await container.aclose()


async def until(predicate, timeout=30.0, every=0.1):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await predicate()):
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(every)
    return result


def terminal(services, order_id):
    async def check():
        order = await services.orders.get(order_id)
        return order if order.status.is_terminal else None

    return check


async def place(services, payload):
    return await services.order_service.place(payload, source="test", actor=Actor.trusted("test"))


class SlowPayments:
    """The embedded payment service, taking `seconds` before each charge."""

    def __init__(self, payments, seconds):
        self._payments, self._seconds = payments, seconds

    async def charge(self, *args):
        await asyncio.sleep(self._seconds)
        return await self._payments.charge(*args)

    def __getattr__(self, name):
        return getattr(self._payments, name)


async def test_an_order_runs_once_through_the_pool_and_its_run_mirrors_it(settings, seed_order, ui):
    async with executor(settings) as services:
        order = await place(services, seed_order)
        done = await until(terminal(services, order.id))
        await until(lambda: _none_pending(services))
    run = ui.wait_for_state(done.flow_run_id, "COMPLETED")  # the executor drained its runs when it stopped
    assert done.status is OrderStatus.COMPLETED
    assert run["name"] == f"order-{order.id}" and run["idempotency_key"] == order.id
    assert run["work_pool_name"] == settings.work_pool and run["run_count"] == 1
    deployments = httpx.post(f"{ui.api}/deployments/filter", json={}).json()
    assert {d["name"]: d["status"] for d in deployments} == {"order-saga": "READY", "inventory-event": "READY"}
    workers = httpx.post(f"{ui.api}/work_pools/{settings.work_pool}/workers/filter", json={}).json()
    assert any(w["status"] == "ONLINE" for w in workers)


async def _none_pending(services) -> bool:
    return await services.outbox.pending_count() == 0


async def test_a_long_step_keeps_its_claim_renewed_and_is_not_taken_over(settings, seed_order, ui):
    probe = bootstrap(settings)
    async with executor(settings, payments=SlowPayments(probe.payments, 4)) as services:
        order = await place(services, seed_order)
        done = await until(terminal(services, order.id))
    run = ui.flow_run(done.flow_run_id)
    assert done.status is OrderStatus.COMPLETED and run["run_count"] == 1
    assert await probe.payments.ledger(order.id) == [("charge", Decimal("149.93"))]
    await probe.aclose()


async def test_a_run_whose_executor_stopped_renewing_its_claim_is_taken_over(settings, seed_order, ui):
    """A dead executor left the run Running and the order claimed; the claim runs out and another executor
    resumes the saga where it stopped."""
    dead = bootstrap(settings)
    order = await place(dead, seed_order)
    run = ui.quick_run("order-saga/order-saga", {"order_id": order.id})
    for state in ({"type": "PENDING"}, {"type": "RUNNING"}):
        httpx.post(f"{ui.api}/flow_runs/{run['id']}/set_state", json={"state": state}).raise_for_status()
    now = datetime.now(UTC)
    await dead.orders.update(order.id, lambda o: (o.attach_flow_run(run["id"]), o.begin_saga(),
                                                  o.claim_saga("dead executor", "t", now + timedelta(seconds=1), now)))
    await dead.aclose()
    await asyncio.sleep(2)
    async with executor(settings) as services:
        done = await until(terminal(services, order.id))
    resumed = ui.wait_for_state(run["id"], "COMPLETED")
    assert done.status is OrderStatus.COMPLETED and resumed["run_count"] == 2
    states = httpx.get(f"{ui.api}/flow_run_states/", params={"flow_run_id": run["id"]}).json()
    assert "Crashed" in [state["name"] for state in states]


async def test_a_stopped_executor_hands_its_runs_to_the_next(settings, seed_order, monkeypatch):
    monkeypatch.setattr(worker, "SHUTDOWN_GRACE", timedelta(seconds=0.5))
    probe = bootstrap(settings)
    async with executor(settings, payments=SlowPayments(probe.payments, 60)) as first:
        order = await place(first, seed_order)
        await until(lambda: _in_flight(first, order.id, Step.PROCESS_PAYMENT))
    async with executor(settings) as second:
        done = await until(terminal(second, order.id))
    assert done.status is OrderStatus.COMPLETED
    assert await probe.payments.ledger(order.id) == [("charge", Decimal("149.93"))]
    await probe.aclose()


async def _in_flight(services, order_id, step) -> bool:
    return (await services.orders.get(order_id)).saga.in_flight is step


async def test_cancel_in_the_ui_stops_a_running_saga_which_compensates_and_ends_cancelled(settings, seed_order, ui):
    probe = bootstrap(settings)
    async with executor(settings, payments=SlowPayments(probe.payments, 2)) as services:
        order = await place(services, seed_order)
        await until(lambda: _in_flight(services, order.id, Step.PROCESS_PAYMENT))
        ui.cancel((await services.orders.get(order.id)).flow_run_id)
        done = await until(terminal(services, order.id))
    run = ui.wait_for_state(done.flow_run_id, "CANCELLED")
    assert done.status is OrderStatus.CANCELLED and done.failure_reason == "cancelled on request before CreateShipment"
    assert [kind for kind, _ in await probe.payments.ledger(order.id)] == ["charge", "refund"]
    assert "cancelled" in run["state"]["message"]
    await probe.aclose()


def test_a_cancelled_run_is_logged_as_the_outcome_it_is_not_as_an_error():
    record = logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1,
                               "Finished in state Cancelled('order x cancelled: cancelled on request')", None, None)
    assert worker.CancelledIsNoError().filter(record) and record.levelno == logging.INFO
    failed = logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "Finished in state Failed()", None,
                               None)
    assert worker.CancelledIsNoError().filter(failed) and failed.levelno == logging.ERROR


async def test_every_run_shares_the_executors_one_counted_api_client(settings):
    with temporary_settings({PREFECT_API_URL: settings.prefect_api_url}):
        async with worker.counted_client() as client:
            assert get_client() is client, "the engines would open a client (and a TLS context) per run"
            before = PREFECT_API_CALLS.labels("GET hello")._value.get()
            await client.hello()
    assert PREFECT_API_CALLS.labels("GET hello")._value.get() == before + 1


class InventoryDown:
    async def reserve(self, *args):
        raise TransientFault("inventory API answered 503")

    async def release(self, *args):
        raise TransientFault("inventory API answered 503")


async def test_a_saga_that_keeps_failing_is_parked_after_max_job_attempts(settings, seed_order, ui):
    parked_before = PARKED_JOBS.labels("order")._value.get()
    limited = settings.model_copy(update={"max_job_attempts": 2})
    async with executor(limited, inventory=InventoryDown()) as services:
        order = await place(services, seed_order)
        await until(lambda: _parked(parked_before), timeout=60)
        stuck = await services.orders.get(order.id)
    run = ui.flow_run(stuck.flow_run_id)
    assert stuck.status is OrderStatus.COMPENSATING and stuck.needs_manual_intervention
    assert run["state"]["type"] == "FAILED" and run["run_count"] == 2
    assert "manual intervention required" in run["state"]["message"]


async def _parked(before: float) -> bool:
    return PARKED_JOBS.labels("order")._value.get() > before


async def test_a_paused_deployment_keeps_its_runs_waiting_until_it_is_resumed(settings, seed_order, ui):
    deployment = httpx.get(f"{ui.api}/deployments/name/order-saga/order-saga").json()["id"]
    async with executor(settings) as services:
        httpx.post(f"{ui.api}/deployments/{deployment}/pause_deployment").raise_for_status()
        try:
            await asyncio.sleep(3)  # the executor has seen the pause
            order = await place(services, seed_order)
            await asyncio.sleep(3)
            waiting = await services.orders.get(order.id)
            assert waiting.status is OrderStatus.PROCESSING and waiting.flow_run_id
            assert ui.flow_run(waiting.flow_run_id)["state"]["type"] == "SCHEDULED"
        finally:
            httpx.post(f"{ui.api}/deployments/{deployment}/resume_deployment").raise_for_status()
        done = await until(terminal(services, order.id))
    assert done.status is OrderStatus.COMPLETED


async def most_claimed_at_once(services, count: int, seconds: float = 5) -> int:
    """Places `count` orders of a slow saga and watches for `seconds` how many are being run at once."""
    orders = [await place(services, {"customerId": "c1", "items": [
        {"productId": "p-limit", "productName": "Thing", "quantity": 1, "unitPrice": Decimal("5")}]})
        for _ in range(count)]
    claimed_at_once = []
    for _ in range(int(seconds / 0.05)):
        now = await services.orders.get_many([o.id for o in orders])
        claimed_at_once.append(sum(1 for o in now if o.claim is not None))
        await asyncio.sleep(0.05)
    return max(claimed_at_once)


@pytest.mark.parametrize("limited", ["work_pools/{pool}", "deployments/name/order-saga/order-saga"],
                         ids=["work-pool", "deployment"])
async def test_a_concurrency_limit_of_the_pool_or_the_deployment_holds_runs_back(settings, ui, limited):
    probe = bootstrap(settings)
    started, target = datetime.now(UTC), None
    try:
        async with executor(settings, payments=SlowPayments(probe.payments, 1)) as services:
            await until(lambda: asyncio.to_thread(_registered_since, ui.api, started))
            target = await until(lambda: asyncio.to_thread(_limit_target, ui.api, limited, settings.work_pool))
            await asyncio.to_thread(lambda: httpx.patch(target, json={"concurrency_limit": 1}).raise_for_status())
            await asyncio.sleep(7)  # the executor re-reads the pool and the deployments every 3 s (twice, if busy)
            most = await most_claimed_at_once(services, 3)
    finally:
        if target:
            httpx.patch(target, json={"concurrency_limit": None}).raise_for_status()
        await probe.aclose()
    assert most == 1


def _registered_since(api: str, started: datetime) -> bool:
    """The executor has registered the deployments (which keeps a limit set before, but not one set during)."""
    response = httpx.get(f"{api}/deployments/name/order-saga/order-saga")
    return response.status_code == 200 and datetime.fromisoformat(response.json()["updated"]) > started


def _limit_target(api: str, limited: str, pool: str) -> str | None:
    response = httpx.get(f"{api}/{limited.format(pool=pool)}")
    if response.status_code != 200:
        return None
    return f"{api}/work_pools/{pool}" if limited.startswith("work_pools") else f"{api}/deployments/{response.json()['id']}"


async def test_an_executor_restarting_keeps_what_an_operator_set_on_a_deployment(settings, ui):
    async with executor(settings):
        pass  # the deployments exist
    deployment = httpx.get(f"{ui.api}/deployments/name/order-saga/order-saga").json()["id"]
    httpx.patch(f"{ui.api}/deployments/{deployment}", json={"concurrency_limit": 2, "paused": True}).raise_for_status()
    try:
        async with executor(settings):
            pass  # an executor registers the deployments as it starts, whatever happens next
        kept = httpx.get(f"{ui.api}/deployments/{deployment}").json()
        assert kept["paused"] and kept["global_concurrency_limit"]["limit"] == 2
    finally:
        httpx.patch(f"{ui.api}/deployments/{deployment}", json={"concurrency_limit": None, "paused": False})


class NoExecutor:
    """The dispatcher's view of an executor that takes nothing: runs are created Scheduled and wait."""

    def takes_now(self, deployment_id) -> bool:
        return False

    def start_claimed(self, run) -> None:
        raise AssertionError("nothing is taken")

    def offer(self, run) -> None:
        pass


@contextlib.asynccontextmanager
async def saga_jobs(settings, product_id: str, runs_class=PrefectRuns):
    """The saga jobs of a dispatcher with no executor, over a real Prefect client, and an order whose run exists
    (`Scheduled`) but is not attached yet: yields (services, client, runs, jobs, order, its run)."""
    async with executor(settings):
        pass  # the deployments exist
    services = bootstrap(settings)
    try:
        with temporary_settings({PREFECT_API_URL: settings.prefect_api_url}):
            async with get_client() as client:
                deployment = (await client.read_deployment_by_name("order-saga/order-saga")).id
                runs = runs_class(client, {"order-saga": deployment}, NoExecutor())
                jobs = SagaJobs(services.outbox, services.orders, services.failures, runs, max_attempts=10,
                                claim_seconds=1)
                order = await place(services, {"customerId": "c1", "items": [
                    {"productId": product_id, "productName": "Thing", "quantity": 1, "unitPrice": Decimal("5")}]})
                own = await runs.ensure(order.id, jobs.run_request(order))
                yield services, client, runs, jobs, order, own
    finally:
        await services.aclose()


async def test_a_run_waiting_to_re_run_an_order_another_run_finished_ends_as_the_order_did(settings, ui):
    """A Quick run finished the order; the order's own run, waiting to be re-run, must not take the failed order
    for an operator's Retry."""
    async with saga_jobs(settings, "hazmat-quick") as (services, client, runs, jobs, order, own):
        await services.orders.update(order.id, lambda o: o.attach_flow_run(str(own.id)))
        await runs.retry_later(own, timedelta(hours=1), "a compensation kept failing")
        assert (await services.saga_runs.execute(order.id, "quick-run")).outcome.value == "failed"
        await jobs.after_run(order.id, "quick-run")
        mirrored = await client.read_flow_run(own.id)
    assert mirrored.state_type.value == "FAILED"


class LateExecutorFinishes(PrefectRuns):
    """Takes a run over as the dispatcher does, while the late executor (its own store connection) completes the
    order."""

    def __init__(self, *args, late_orders):
        super().__init__(*args)
        self._late_orders = late_orders

    async def take_over(self, run, why):
        await super().take_over(run, why)
        await self._late_orders.update(run.parameters["order_id"], lambda o: o.complete())


async def test_a_run_re_driven_while_its_late_executor_finishes_the_order_ends_as_the_order_did(settings, ui):
    """The executor's claim ran out but nobody took it: while the dispatcher takes the run over, the executor
    completes the order. The rescheduled run must not be left for a re-run nobody would watch."""
    late = bootstrap(settings)
    runs_class = functools.partial(LateExecutorFinishes, late_orders=late.orders)
    async with saga_jobs(settings, "p-late", runs_class) as (services, client, runs, jobs, order, own):
        for state in ({"type": "PENDING"}, {"type": "RUNNING"}):
            httpx.post(f"{ui.api}/flow_runs/{own.id}/set_state", json={"state": state}).raise_for_status()
        past = datetime.now(UTC) - timedelta(seconds=10)
        await services.orders.update(order.id, lambda o: (o.attach_flow_run(str(own.id)), o.begin_saga(past),
                                                          o.claim_saga("late executor", "t", past, past)))
        await asyncio.sleep(1.2)  # the run has been Running longer than a just-claimed one would be
        look_again = await jobs.reconcile(Job(order.id, 1))
        ended = await client.read_flow_run(own.id)
    await late.aclose()
    assert look_again is None  # the job is over: the order finished
    assert ended.state_type.value == "COMPLETED"


async def test_a_sweep_ends_a_claimed_run_left_behind_as_its_finished_order_and_leaves_waiting_runs(settings, ui):
    """An executor claimed the run of an order that was already over, then died: no job watches the run any
    more, and the sweep ends it as the order ended. A scheduled run (an operator's Retry waiting behind a paused
    pool, say) and a run of an order still going are left alone."""
    async with saga_jobs(settings, "p-swept") as (services, client, runs, jobs, order, left_behind):
        for state in ({"type": "PENDING"}, {"type": "RUNNING"}):
            httpx.post(f"{ui.api}/flow_runs/{left_behind.id}/set_state", json={"state": state}).raise_for_status()
        await services.orders.update(order.id, lambda o: (o.attach_flow_run(str(left_behind.id)), o.complete()))
        going = await place(services, {"customerId": "c1", "items": [
            {"productId": "p-going", "productName": "Thing", "quantity": 1, "unitPrice": Decimal("5")}]})
        running = await runs.ensure(going.id, jobs.run_request(going))
        for state in ({"type": "PENDING"}, {"type": "RUNNING"}):
            httpx.post(f"{ui.api}/flow_runs/{running.id}/set_state", json={"state": state}).raise_for_status()
        await services.orders.update(going.id, lambda o: o.attach_flow_run(str(running.id)))
        await asyncio.sleep(2.2)  # untouched for two claim lengths
        await jobs.sweep()
        states = [(await client.read_flow_run(run.id)).state_type.value for run in (left_behind, running)]
    assert states == ["COMPLETED", "RUNNING"]

"""The saga worker: turns outbox entries into flow runs of the `order-saga` deployment and executes them.

For each claimed order it creates (or finds, by idempotency key = order id) the flow run `order-<id>`,
claims that run in Prefect by moving it to Pending, and executes it in this long-lived process with
`run_flow_async`: no subprocess per flow run, which would cost about a second of CPU each on 2 cores.
Several sagas run at once (option `WorkerConcurrency`). The outbox lease is renewed while a saga runs; if
this process dies, the lease runs out and the order is claimed again, and the idempotent steps make the
re-run safe. Run with `python -m deployments.worker`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from datetime import timedelta
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.flow_engine import run_flow_async
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Pending

from deployments.registration import register_deployments
from flows import runtime
from flows.order_saga import order_saga
from fulfillment.bootstrap import Container, bootstrap
from fulfillment.logs import configure_logging
from fulfillment.ports import OutboxEntry

log = logging.getLogger("fulfillment.worker")

LEASE = timedelta(seconds=30)
MAX_RETRY_DELAY = timedelta(seconds=60)
SHUTDOWN_GRACE = timedelta(seconds=10)


class SagaWorker:
    def __init__(self, container: Container, client: PrefectClient, deployment_id: UUID):
        self._container = container
        self._client = client
        self._deployment_id = deployment_id
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._in_flight: dict[str, asyncio.Task[None]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        settings = self._container.settings
        log.info("saga worker started", extra={"worker_id": self._worker_id,
                                               "concurrency": settings.worker_concurrency})
        renewer = asyncio.create_task(self._renew_leases(stop))
        while not stop.is_set():
            free = settings.worker_concurrency - len(self._in_flight)
            entries = await self._claim(free) if free > 0 else []
            for entry in entries:
                self._in_flight[entry.order_id] = asyncio.create_task(self._execute(entry))
            if len(entries) < free or not entries:
                await _wait(stop, settings.outbox_poll_seconds)
        await self._drain()
        renewer.cancel()

    async def _claim(self, limit: int) -> list[OutboxEntry]:
        try:
            return await self._container.outbox.claim(self._worker_id, limit=limit, lease=LEASE)
        except Exception:  # noqa: BLE001 - the store may be briefly unavailable; keep polling
            log.exception("could not claim from the saga outbox")
            return []

    async def _execute(self, entry: OutboxEntry) -> None:
        order_id = entry.order_id
        try:
            flow_run = await self._flow_run_for(order_id)
            state = await run_flow_async(order_saga, flow_run=flow_run, parameters={"order_id": order_id},
                                         return_type="state")
            await self._container.outbox.done(order_id)
            log.info("saga finished", extra={"order_id": order_id, "flow_run_id": str(flow_run.id),
                                             "state": state.name})
        except Exception as error:  # noqa: BLE001 - whatever went wrong, the order is retried later
            delay = min(timedelta(seconds=2 ** entry.attempts), MAX_RETRY_DELAY)
            log.exception("saga could not run; retrying", extra={"order_id": order_id, "attempt": entry.attempts,
                                                                  "retry_in_s": delay.total_seconds()})
            await self._container.outbox.release(self._worker_id, order_id, error=repr(error), retry_in=delay)
        finally:
            self._in_flight.pop(order_id, None)

    async def _flow_run_for(self, order_id: str) -> FlowRun:
        """The order's one flow run (created on first use), claimed for this worker."""
        order = await self._container.orders.get(order_id)
        flow_run = await self._client.create_flow_run_from_deployment(
            self._deployment_id, parameters={"order_id": order_id}, name=f"order-{order_id}",
            tags=[order.customer_id], idempotency_key=order_id)
        if order.flow_run_id != str(flow_run.id):
            await self._container.orders.update(order_id, lambda o: o.attach_flow_run(str(flow_run.id)))
        # We hold the outbox lease, so no other worker runs this order now: a run left behind by a dead
        # worker (Running, Crashed, ...) is taken over rather than waited for.
        resumed = flow_run.state_type is not StateType.SCHEDULED
        await self._client.set_flow_run_state(flow_run.id, Pending(), force=resumed)
        return await self._client.read_flow_run(flow_run.id)

    async def _renew_leases(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _wait(stop, LEASE.total_seconds() / 3)
            try:
                await self._container.outbox.renew(self._worker_id, list(self._in_flight), lease=LEASE)
            except Exception:  # noqa: BLE001 - try again at the next tick, well before the lease ends
                log.exception("could not renew outbox leases")

    async def _drain(self) -> None:
        """On shutdown: let the sagas in flight finish for a while, then stop them and hand their orders back
        to the outbox at once, so the next worker resumes them (every step is idempotent)."""
        if not self._in_flight:
            return
        log.info("waiting for sagas in flight", extra={"count": len(self._in_flight)})
        _, unfinished = await asyncio.wait(self._in_flight.values(), timeout=SHUTDOWN_GRACE.total_seconds())
        stopped = [order_id for order_id, task in self._in_flight.items() if task in unfinished]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        for order_id in stopped:
            await self._container.outbox.release(self._worker_id, order_id, error="worker stopped",
                                                 retry_in=timedelta(0))
        log.warning("sagas handed back to the outbox", extra={"order_ids": stopped})


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def serve() -> None:
    container = bootstrap()
    runtime.install(container)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with get_client() as client:
            (deployment_id,) = await register_deployments()
            # The heartbeat only matters to detect a dead runner; the outbox lease does that here.
            with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                await SagaWorker(container, client, deployment_id).run(stop)
    finally:
        await container.aclose()


def main() -> None:
    configure_logging()
    asyncio.run(serve())


if __name__ == "__main__":
    main()

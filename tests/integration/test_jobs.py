"""The worker's job sources over the real SQLite store: a job is let go only once its work is done."""

from __future__ import annotations

from datetime import timedelta

import pytest

from deployments.jobs import InventoryEventJobs, JobNotFinished, SagaJobs
from fulfillment.bootstrap import bootstrap
from fulfillment.ports import InventoryEvent

LEASE = timedelta(seconds=30)


class Announcements:
    """The outside world's end of `FailureAnnouncer`: records what was announced, or is down."""

    def __init__(self, down: bool = False):
        self.down, self.announced = down, []

    async def order_failed(self, order):
        if self.down:
            raise ConnectionError("order-failures queue unreachable")
        self.announced.append(order.id)

    async def aclose(self):
        pass


@pytest.fixture
async def services(settings):
    container = bootstrap(settings)
    yield container
    await container.aclose()


async def claimed(jobs: SagaJobs, services, payload) -> str:
    order = await services.order_service.place(payload, source="test")
    await services.saga.run(order.id)
    (job,) = await jobs.claim("w1", 10, LEASE)
    return job.key


async def test_a_failed_order_is_announced_before_its_job_is_done(services, seed_order):
    announcements = Announcements()
    jobs = SagaJobs(services.outbox, services.orders, announcements)
    hazmat = {**seed_order, "items": [{**seed_order["items"][0], "productId": "hazmat-1"}]}
    order_id = await claimed(jobs, services, hazmat)
    await jobs.done(order_id, flow_run_completed=False)
    assert announcements.announced == [order_id]
    assert await services.outbox.pending_count() == 0


async def test_a_failed_announcement_keeps_the_job_for_a_retry(services, seed_order):
    jobs = SagaJobs(services.outbox, services.orders, Announcements(down=True))
    hazmat = {**seed_order, "items": [{**seed_order["items"][0], "productId": "hazmat-1"}]}
    order_id = await claimed(jobs, services, hazmat)
    with pytest.raises(ConnectionError):
        await jobs.done(order_id, flow_run_completed=False)
    assert await services.outbox.pending_count() == 1


async def test_completed_orders_are_not_announced(services, seed_order):
    announcements = Announcements()
    jobs = SagaJobs(services.outbox, services.orders, announcements)
    await jobs.done(await claimed(jobs, services, seed_order), flow_run_completed=True)
    assert announcements.announced == []


async def test_a_saga_that_stopped_short_keeps_its_job(services, seed_order):
    jobs = SagaJobs(services.outbox, services.orders, Announcements())
    order = await services.order_service.place(seed_order, source="test")
    (job,) = await jobs.claim("w1", 10, LEASE)
    with pytest.raises(JobNotFinished):
        await jobs.done(job.key, flow_run_completed=False)
    assert await jobs.needs_run(job)
    assert await services.outbox.pending_count() == 1 and order.id == job.key


async def test_an_inventory_event_whose_run_failed_is_not_marked_applied(services):
    jobs = InventoryEventJobs(services.inventory_events)
    await services.inventory_events.record(InventoryEvent("e1", "Inventory.StockUpdated", "p1", 5))
    (job,) = await jobs.claim("w1", 10, LEASE)
    with pytest.raises(JobNotFinished):
        await jobs.done(job.key, flow_run_completed=False)
    await services.inventory_events.release("w1", job.key, error="test", retry_in=timedelta(0))
    (again,) = await jobs.claim("w2", 10, LEASE)
    assert again.key == "e1" and again.attempts == 2

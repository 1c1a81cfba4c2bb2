"""The scaled profile as the README starts it (`order-saga up --profile scaled`): Prefect on PostgreSQL and Redis
from the system's packages, two API processes with the background services apart, two executors, the gateway in
two processes. 200 orders while one executor and one API process are killed with SIGKILL: every order ends
terminal with exactly one flow run in the matching state, and both executors ran sagas."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.profile import spawned_children
from deployments.postgres import postgres_bin_dir
from tests.e2e.conftest import (
    RUN_STATE,
    Stack,
    pids_running,
    runs_in_step,
    settled,
    start_stack,
    stop_stack,
)
from tests.prefect_server import free_port
from tests.system_packages import debian_packages

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ORDERS = 200
CLAIM_SECONDS = 5


@pytest.fixture(scope="module")
def scaled_stack() -> Iterator[Stack]:
    debian_packages(lambda: postgres_bin_dir() is not None and shutil.which("redis-server") is not None,
                    "postgresql", "redis-server")
    # PostgreSQL runs as the `postgres` user when the tests run as root: it must reach the data dir
    directory = Path(tempfile.mkdtemp(prefix="order-saga-scaled-"))
    directory.chmod(0o755)
    process, stack = start_stack(directory / "var", directory / "stack.log", "--profile", "scaled",
                                 OrderProcessing__PostgresPort=str(free_port()),
                                 OrderProcessing__RedisPort=str(free_port()),
                                 OrderProcessing__SagaClaimSeconds=str(CLAIM_SECONDS))
    yield stack
    stop_stack(process, stack.log)
    shutil.rmtree(directory, ignore_errors=True)


def place_orders(stack: Stack, ids: list[str]) -> None:
    with httpx.Client(timeout=30) as http:
        for number in range(ORDERS):
            order = {"customerId": f"cust-scaled-{number % 10}",
                     "items": [{"productId": f"scaled-{number % 20}", "productName": "Scaled thing", "quantity": 1,
                                "unitPrice": 12.5}]}
            response = http.post(f"{stack.gateway}/api/orders", json=order)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
            time.sleep(0.05)


def test_two_executors_and_two_api_processes_run_each_saga_once_while_one_of_each_is_killed(scaled_stack):
    [api] = pids_running(scaled_stack, "deployments.prefect_server")
    api_workers = spawned_children(api)
    executors = pids_running(scaled_stack, "deployments.worker")
    assert len(api_workers) == 2 and len(executors) == 2
    ids: list[str] = []
    submitter = threading.Thread(target=place_orders, args=(scaled_stack, ids), daemon=True)
    submitter.start()

    time.sleep(4)
    os.kill(executors[0], signal.SIGKILL)  # the supervisor restarts it; its claimed sagas are taken over
    time.sleep(3)
    os.kill(api_workers[0], signal.SIGKILL)  # uvicorn starts another; clients retry on the other one
    submitter.join()

    orders = settled(scaled_stack, ids, timeout=420)
    want = {order["id"]: [RUN_STATE[order["status"]]] for order in orders}
    runs = runs_in_step(scaled_stack, ids, want, timeout=8 * CLAIM_SECONDS)
    finished = [line for line in log_lines(scaled_stack.log) if line.get("message") == "flow run finished"]
    finished_by = collections.Counter(line["worker"] for line in finished)
    completions = collections.Counter(line["flow_run_id"] for line in finished if line["state"] == "Completed")
    statuses = collections.Counter(order["status"] for order in orders)
    print(f"\nscaled: orders={len(orders)} {dict(statuses)} runs finished by executor: {dict(finished_by)}")

    assert len(orders) == ORDERS
    assert runs == want, "one flow run per order, final in the state that matches the order"
    assert statuses["completed"] == ORDERS
    # A saga whose executor died after its last step ends in the run the dispatcher mirrors, with no such line
    assert len(completions) >= ORDERS - 10 and set(completions.values()) == {1}, "no saga ran to completion twice"
    assert sum(count >= ORDERS // 10 for count in finished_by.values()) >= 2, "the sagas spread over the executors"
    log = scaled_stack.log.read_text()
    assert "worker exited with code -9; restarting" in log or "worker 2 exited with code -9; restarting" in log
    replaced = spawned_children(api)
    assert len(replaced) == 2 and api_workers[0] not in replaced, "uvicorn replaced the API process"


def log_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]

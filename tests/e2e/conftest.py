"""The whole stack started the way the README starts it (`make up`), on free ports and a temporary data dir."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from deployments.servicebus_broker.broker import LocalServiceBus
from fulfillment.adapters.sqlite_orders import SqliteOrderRepository
from fulfillment.service.requests import new_order, parse_create_order
from tests.chaos.downstream import ChaosDownstream
from tests.conftest import SEED_ORDER
from tests.prefect_server import free_port
from tests.servicebus_broker.helpers import ORDER_FAILURES, ORDERS

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180
WEBHOOK_KEY = "e2e-webhook-key"


@dataclass
class Stack:
    gateway: str
    services: str  # the embedded services over HTTP, on their own loopback port
    prefect_api: str
    data_dir: Path
    log: Path
    env: dict[str, str]

    def post_order(self, payload: dict) -> dict:
        response = httpx.post(f"{self.gateway}/api/orders", json=payload, timeout=10)
        assert response.status_code == 202, response.text
        return response.json()

    def wait_terminal(self, order_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            order = httpx.get(f"{self.gateway}/api/orders/{order_id}", timeout=10).json()
            if order["status"] in ("completed", "failed", "cancelled"):
                return order
            time.sleep(0.2)
        raise AssertionError(f"order {order_id} still {order['status']} after {timeout}s\n{self.log.read_text()[-3000:]}")

    def graphql(self, query: str, **variables) -> dict:
        response = httpx.post(f"{self.gateway}/graphql", json={"query": query, "variables": variables}, timeout=10)
        body = response.json()
        assert "errors" not in body, body
        return body["data"]


class OtlpCollector:
    """Receives the spans the stack exports over OTLP/HTTP (protobuf), as a tracing backend would."""

    def __init__(self):
        self.spans: list[tuple[str, str, str]] = []  # (service, span name, trace id)
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                collector.receive(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def receive(self, request) -> None:
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                self.spans += [(service, span.name, span.trace_id.hex()) for span in scope_spans.spans]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_stack(data_dir: Path, log: Path, *up_options: str, **environment: str) -> tuple[subprocess.Popen, Stack]:
    """`make up` (`order-saga up` with `up_options`) with its output in `log`, once it says it is up."""
    prefect_port, gateway_port, services_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "OrderProcessing__DataDir": str(data_dir),
        "OrderProcessing__GatewayPort": str(gateway_port),
        "OrderProcessing__EmbeddedServicesPort": str(services_port),
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "EventGrid__WebhookKey": WEBHOOK_KEY,
        **environment,
    }
    with log.open("w") as output:
        command = [str(Path(sys.executable).parent / "order-saga"), "up", *up_options] if up_options else ["make", "up"]
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    stack = Stack(f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{env['OrderProcessing__EmbeddedServicesPort']}",
                  env["PREFECT_API_URL"], data_dir, log, env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while "order-saga is up" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_stack(process, log)
            raise AssertionError(f"the stack did not start:\n{log.read_text()[-5000:]}")
        time.sleep(0.5)
    return process, stack


def stop_stack(process: subprocess.Popen, log: Path) -> None:
    """SIGTERM to the whole `make up` process group, as a service manager does; the stack must stop cleanly."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    deadline = time.monotonic() + 60
    while not stopped(log):
        assert time.monotonic() < deadline, f"the stack did not stop cleanly:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def stopped(log: Path) -> bool:
    """Whether the supervisor's last line (JSON: the stack's output is not a terminal) says `stopped`."""
    lines = log.read_text().splitlines()
    return bool(lines) and lines[-1].startswith("{") and json.loads(lines[-1])["message"] == "stopped"


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def preloaded_order(stack_dir) -> str:
    """An order stored as if a process had died right after persisting it: in the outbox, no flow run yet."""

    async def store() -> str:
        repository = SqliteOrderRepository(stack_dir / "var" / "orders.db")
        try:
            order = new_order(parse_create_order(copy.deepcopy(SEED_ORDER)))
            return (await repository.add(order)).id
        finally:
            await repository.close()

    return asyncio.run(store())


@pytest.fixture(scope="session")
def otlp_collector():
    collector = OtlpCollector()
    yield collector
    collector.close()


@pytest.fixture(scope="session")
def servicebus():
    broker = LocalServiceBus((ORDERS, ORDER_FAILURES), lock_duration=30).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def stack(stack_dir, preloaded_order, otlp_collector, servicebus):
    """The stack with every way in: REST, GraphQL, Event Grid (a webhook key) and Service Bus (a local broker)."""
    process, stack = start_stack(stack_dir / "var", stack_dir / "stack.log", OTEL_TRACES_EXPORTER="otlp",
                                 OTEL_EXPORTER_OTLP_ENDPOINT=otlp_collector.endpoint, OTEL_BSP_SCHEDULE_DELAY="200",
                                 ServiceBusConnection=servicebus.connection_string)
    yield stack
    stop_stack(process, stack.log)


RUN_STATE = {"completed": "COMPLETED", "failed": "FAILED", "cancelled": "CANCELLED"}  # a run mirrors its order


def settled(stack, order_ids: list[str], timeout: float) -> list[dict]:
    """Every order terminal and the saga backlog empty (each run mirrors its order)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30) as http:
        while True:
            orders = [http.get(f"{stack.gateway}/api/orders/{order_id}").json() for order_id in order_ids]
            open_orders = [o["id"] for o in orders if o["status"] not in ("completed", "failed", "cancelled")]
            backlog = http.get(f"{stack.gateway}/readyz").json().get("sagaBacklog")
            if not open_orders and not backlog:
                return orders
            assert time.monotonic() < deadline, f"not settled: {len(open_orders)} open, backlog {backlog}: " \
                                                f"{open_orders[:5]}"
            time.sleep(1)


def runs_in_step(stack, order_ids: list[str], want: dict[str, list[str]], timeout: float) -> dict[str, list[str]]:
    """The runs once they match `want`, or as they are after `timeout`: a run left behind by a killed executor
    is ended by the next sweep (every two claim lengths, once it is two claim lengths old)."""
    deadline = time.monotonic() + timeout
    while (runs := flow_runs_by_name(stack, order_ids)) != want and time.monotonic() < deadline:
        time.sleep(1)
    return runs


def flow_runs_by_name(stack, order_ids: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {order_id: [] for order_id in order_ids}
    for start in range(0, len(order_ids), 100):
        names = [f"order-{order_id}" for order_id in order_ids[start:start + 100]]
        runs = httpx.post(f"{stack.prefect_api}/flow_runs/filter", timeout=30,
                          json={"flow_runs": {"name": {"any_": names}}, "limit": 200}).json()
        for run in runs:
            found[run["name"].removeprefix("order-")].append(run["state_type"])
    return found


def pids_running(stack: Stack, module: str) -> list[int]:
    """The pids of the stack's processes running `python -m <module>` (found by their data dir)."""
    marker = f"OrderProcessing__DataDir={stack.data_dir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and f"-m\0{module}\0".encode() in (proc / "cmdline").read_bytes()
                    and marker in (proc / "environ").read_bytes().split(b"\0")):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


CLAIM_SECONDS = 3
"""The chaos stack's `SagaClaimSeconds`: a paused or killed executor's sagas are taken over after this."""
DOWNSTREAM_TIMEOUT_SECONDS = 3


@pytest.fixture(scope="session")
def downstream():
    """Inventory, payments and shipping over HTTP, written apart from ours, with faults on demand and a ledger."""
    with ChaosDownstream(seed=7, client_timeout=DOWNSTREAM_TIMEOUT_SECONDS) as service:
        yield service


@pytest.fixture(scope="session")
def chaos_stack(tmp_path_factory, downstream):
    """The stack as `make up` starts it, against the chaos downstream, with short claims and timeouts."""
    directory = tmp_path_factory.mktemp("chaos")
    process, stack = start_stack(
        directory / "var", directory / "stack.log",
        InventoryService__BaseUrl=downstream.inventory_url, PaymentService__BaseUrl=downstream.payments_url,
        ShippingService__BaseUrl=downstream.shipping_url, OrderProcessing__DownstreamTimeoutSeconds=str(DOWNSTREAM_TIMEOUT_SECONDS),
        OrderProcessing__SagaClaimSeconds=str(CLAIM_SECONDS), OrderProcessing__StepAttempts="3",
        OrderProcessing__CompensationAttempts="3", OrderProcessing__RetryBaseSeconds="0.05",
        OrderProcessing__OutboxPollSeconds="0.1")
    yield stack
    stop_stack(process, stack.log)


class Executors:
    """More executors beside the stack's own (`order-saga worker`, as the README says), and the stack's own."""

    def __init__(self, stack: Stack):
        self._stack = stack
        self.started: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        with (self._stack.log.parent / f"executor-{len(self.started)}.log").open("w") as log:
            process = subprocess.Popen([str(Path(sys.executable).parent / "order-saga"), "worker"], cwd=ROOT,
                                       env=self._stack.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.started.append(process)
        return process

    def stack_worker_pid(self) -> int:
        """The pid of the executor that `make up` supervises."""
        ours = {process.pid for process in self.started}
        pids = [pid for pid in pids_running(self._stack, "deployments.worker") if pid not in ours]
        assert len(pids) == 1, f"the stack's worker is not running as one process: {pids}"
        return pids[0]

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.fixture
def executors(chaos_stack):
    started = Executors(chaos_stack)
    yield started
    started.stop_all()

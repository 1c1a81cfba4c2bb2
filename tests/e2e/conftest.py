"""The whole stack started the way the README starts it (`make up`), on free ports and a temporary data dir."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from fulfillment.adapters.sqlite_orders import SqliteOrderRepository
from fulfillment.service.requests import new_order, parse_create_order
from tests.conftest import SEED_ORDER
from tests.servicebus_broker.broker import LocalServiceBus
from tests.servicebus_broker.helpers import ORDER_FAILURES, ORDERS

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180
WEBHOOK_KEY = "e2e-webhook-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    gateway: str
    prefect_api: str
    data_dir: Path
    log: Path

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


def start_stack(data_dir: Path, log: Path, **environment: str) -> tuple[subprocess.Popen, Stack]:
    prefect_port, gateway_port = free_port(), free_port()
    env = {
        **os.environ,
        "OrderProcessing__DataDir": str(data_dir),
        "OrderProcessing__GatewayPort": str(gateway_port),
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_UI_URL": f"http://127.0.0.1:{prefect_port}",
        "EventGrid__WebhookKey": WEBHOOK_KEY,
        **environment,
    }
    with log.open("w") as output:
        process = subprocess.Popen(["make", "up"], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    stack = Stack(f"http://127.0.0.1:{gateway_port}", env["PREFECT_API_URL"], data_dir, log)
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
    while not log.read_text().rstrip().endswith("stopped"):
        assert time.monotonic() < deadline, f"the stack did not stop cleanly:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


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

"""The embedded services' own server (`python -m gateway.services_server`), never the public gateway: it listens
on loopback only, and the saga runs against it over HTTP with every base URL pointing at it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from fulfillment.domain import Actor, OrderStatus
from fulfillment.settings import Settings
from gateway.app import create_app
from tests.conftest import in_the_stack
from tests.prefect_server import free_port

START_TIMEOUT_S = 30


@pytest.fixture
def services_url(tmp_path: Path) -> Iterator[str]:
    """The server as `make up` starts it, over its own data directory; the gateway's host is set to every
    interface, which must not move the services off loopback."""
    port = free_port()
    env = {**os.environ, "OrderProcessing__DataDir": str(tmp_path / "services"),
           "OrderProcessing__EmbeddedServicesPort": str(port), "OrderProcessing__GatewayHost": "0.0.0.0"}
    process = subprocess.Popen([sys.executable, "-m", "gateway.services_server"], cwd=tmp_path, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/healthz", process)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert process.poll() is None, f"the services server exited with code {process.returncode}"
        assert time.monotonic() < deadline, f"the services server did not answer {url}"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)


def test_the_public_gateway_does_not_serve_the_embedded_services(tmp_path):
    settings = Settings(data_dir=tmp_path, prefect_api_url="http://127.0.0.1:9/api")  # no base URL set
    with TestClient(create_app(settings)) as gateway:
        for method, path in [("GET", "/services/inventory/stock/prod-1"), ("PUT", "/services/inventory/stock/prod-1"),
                             ("DELETE", "/services/payments/charges/order-1"), ("PUT", "/inventory/stock/prod-1"),
                             ("PUT", "/services/shipping/shipments/order-1")]:
            assert gateway.request(method, path, json={"quantity": 5}).status_code == 404, (method, path)


@pytest.mark.skipif(sys.platform != "linux", reason="all of 127.0.0.0/8 reaches the loopback interface on Linux")
def test_the_services_server_listens_on_127_0_0_1_only(services_url):
    port = int(services_url.rsplit(":", 1)[1])
    assert httpx.get(f"{services_url}/inventory/stock/prod-1").json() == {"productId": "prod-1", "available": 100}
    with pytest.raises(ConnectionRefusedError):  # a socket bound to every interface would accept this one
        socket.create_connection(("127.0.0.2", port), timeout=5).close()


def saga_over_http(tmp_path: Path, services_url: str, items: list[dict]) -> OrderStatus:
    """Places an order and runs its saga in a container whose every downstream is a base URL on the server."""
    settings = Settings(data_dir=tmp_path / "orders", prefect_api_url="http://127.0.0.1:9/api",
                        retry_base_seconds=0.001, inventory_base_url=f"{services_url}/inventory",
                        payment_base_url=f"{services_url}/payments", shipping_base_url=f"{services_url}/shipping")

    async def place_and_run(container) -> OrderStatus:
        order = await container.order_service.place({"customerId": "cust-http", "items": items}, source="test",
                                                    actor=Actor.trusted("test"))
        return (await container.saga.run(order.id)).status

    return in_the_stack(settings, place_and_run)


def stock(services_url: str, product_id: str) -> int:
    return httpx.get(f"{services_url}/inventory/stock/{product_id}").json()["available"]


def test_a_saga_completes_with_every_base_url_pointing_at_the_services_server(tmp_path, services_url):
    item = {"productId": "prod-http", "productName": "Thing", "quantity": 3, "unitPrice": 10.0}
    assert saga_over_http(tmp_path, services_url, [item]) == OrderStatus.COMPLETED
    assert stock(services_url, "prod-http") == 97  # the server's own store took the reservation


def test_a_failing_saga_compensates_over_http_on_the_services_server(tmp_path, services_url):
    items = [{"productId": "prod-http", "productName": "Thing", "quantity": 3, "unitPrice": 10.0},
             {"productId": "hazmat-http", "productName": "Acid", "quantity": 1, "unitPrice": 10.0}]
    assert saga_over_http(tmp_path, services_url, items) == OrderStatus.FAILED
    assert stock(services_url, "prod-http") == 100  # released by CompensateInventory

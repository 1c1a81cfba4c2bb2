"""End to end: the stack with every base URL pointing at its own embedded-services port, as
docs/downstream-http.md tells users to set them."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import start_stack, stop_stack
from tests.prefect_server import free_port

pytestmark = pytest.mark.e2e


def test_sagas_run_over_http_against_the_stacks_own_services_port(tmp_path, seed_order):
    port = free_port()
    services = f"http://127.0.0.1:{port}"
    process, stack = start_stack(
        tmp_path / "var", tmp_path / "stack.log", OrderProcessing__EmbeddedServicesPort=str(port),
        InventoryService__BaseUrl=f"{services}/inventory", PaymentService__BaseUrl=f"{services}/payments",
        ShippingService__BaseUrl=f"{services}/shipping")
    try:
        assert f"services  {services}/inventory  /payments  /shipping  (loopback only)" in stack.log.read_text()
        order = stack.wait_terminal(stack.post_order(seed_order)["id"])
        assert order["status"] == "completed", order
        assert httpx.get(f"{services}/inventory/stock/prod-100").json()["available"] == 98
        assert httpx.get(f"{stack.gateway}/services/inventory/stock/prod-100").status_code == 404
    finally:
        stop_stack(process, stack.log)

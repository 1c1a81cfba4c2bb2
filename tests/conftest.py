from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Iterator

import pytest

from fulfillment.bootstrap import Container, bootstrap
from fulfillment.settings import Settings
from tests.cosmos_server.server import CosmosServer, running_cosmos_server
from tests.prefect_server import running_prefect_server

SEED_ORDER = {
    "customerId": "cust-001",
    "items": [
        {"productId": "prod-100", "productName": "Wireless Headphones", "quantity": 2, "unitPrice": 49.99},
        {"productId": "prod-200", "productName": "USB-C Cable", "quantity": 5, "unitPrice": 9.99},
    ],
}


FIGURES: list[str] = []


@pytest.fixture(scope="session")
def report_figure() -> Callable[[str], None]:
    """Adds a line to the "figures" section printed at the end of the run (what a test measured)."""
    return FIGURES.append


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def in_the_stack(settings: Settings, work: Callable[[Container], Awaitable[object]]) -> object:
    """Runs `await work(container)` on a second container over the same data directory, as another process
    of the stack (the worker) would, from synchronous test code."""

    async def run() -> object:
        container = bootstrap(settings)
        try:
            return await work(container)
        finally:
            await container.aclose()

    return asyncio.run(run())


def run_saga(settings: Settings, order_id: str) -> None:
    in_the_stack(settings, lambda container: container.saga.run(order_id))


@pytest.fixture
def seed_order() -> dict:
    """The seed's sample CreateOrderRequest (total 149.93)."""
    return copy.deepcopy(SEED_ORDER)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, prefect_api_url="http://127.0.0.1:9/api", retry_base_seconds=0.001)


@pytest.fixture(scope="session")
def cosmos_server(request, tmp_path_factory) -> Iterator[CosmosServer]:
    """A real Cosmos DB server (`@vercel/cosmosdb-server`, installed on first use), once per test session."""
    with running_cosmos_server(tmp_path_factory.mktemp("cosmos"), progress=uncaptured(request.config)) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """The API URL of a real Prefect server (SQLite), once per test session."""
    with running_prefect_server(tmp_path_factory.mktemp("prefect")) as api_url:
        yield api_url


def uncaptured(config) -> Callable[[str], None]:
    """Prints past pytest's output capture, so that a first-time `npm ci` says what it is doing."""
    capture = config.pluginmanager.get_plugin("capturemanager")

    def show(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(f"\n{line}", flush=True)

    return show

"""The fuzz suite's app and its figures: each target counts the requests it sent and the answers of 5xx, and
the run's "figures" section shows them (`fuzz: all targets: 2400 requests, 0 answered 5xx`).

`FUZZ_EXAMPLES` bounds the examples of each property (hypothesis `max_examples`); the default keeps the suite
under a minute on a 2-core machine (about 35 s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from starlette.applications import Starlette
from starlette.testclient import TestClient

from fulfillment.settings import Settings
from gateway.app import create_app
from tests.conftest import FIGURES

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
WEBHOOK_KEY = "fuzz-webhook-key"
FUZZ_SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class Tally:
    requests: int = 0
    server_errors: int = 0
    seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def record(self, status: int) -> None:
        self.requests += 1
        self.server_errors += status >= 500
        self.seconds = time.monotonic() - self.started


TALLIES: dict[str, Tally] = {}


def tally(target: str) -> Tally:
    return TALLIES.setdefault(target, Tally())


class PrefectUp:
    """A Prefect API that answers and knows no runs: `/readyz` is ready without a Prefect server."""

    async def flow_runs(self, flow_run_ids: list[str]) -> list[None]:
        return [None] * len(flow_run_ids)

    async def is_reachable(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


def fuzz_app(data_dir) -> Starlette:
    """The gateway as `make up` serves it, with the webhook, over embedded SQLite; no Prefect server (orders
    wait in the outbox)."""
    return create_app(Settings(OrderProcessing__DataDir=data_dir, EventGrid__WebhookKey=WEBHOOK_KEY),
                      monitor=PrefectUp())


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    with TestClient(fuzz_app(tmp_path_factory.mktemp("fuzz")), raise_server_exceptions=False) as client:
        yield client


def pytest_sessionfinish() -> None:
    """The figures of each target, for the run's "figures" section (tests/conftest.py)."""
    for target, figures in TALLIES.items():
        FIGURES.append(f"fuzz: {target}: {figures.requests} requests, {figures.server_errors} answered 5xx "
                       f"({figures.seconds:.1f} s)")
    if TALLIES:
        total = sum(figures.requests for figures in TALLIES.values())
        FIGURES.append(f"fuzz: all targets: {total} requests, "
                       f"{sum(figures.server_errors for figures in TALLIES.values())} answered 5xx")

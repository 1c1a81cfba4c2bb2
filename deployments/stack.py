"""`order-saga up`: the whole stack on embedded defaults, its processes kept running and stopped cleanly together.

1. the Prefect server (SQLite, UI) on the host and port of `PREFECT_API_URL`;
2. the embedded downstream services over HTTP (`python -m gateway.services_server`) on 127.0.0.1 only, unless
   `EmbeddedServicesPort` is 0; served whether or not base URLs are set, so that they can point at it;
3. the saga worker (`python -m deployments.worker`), once the server answers;
4. the Service Bus listener, when a connection is configured;
5. the gateway (`python -m gateway`).

`--profile scaled` puts Prefect on PostgreSQL and Redis with its API and services apart (deployments/scaled.py).
The supervisor (deployments/supervisor.py) restarts a process that dies; Ctrl-C stops them all.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import httpx

from deployments import scaled
from deployments.scaled import ONE_OF_EACH, Topology
from deployments.supervisor import Child, Supervisor
from fulfillment.logs import configure_logging
from fulfillment.settings import EMBEDDED_SERVICES_HOST, Settings, refuse_open_exposure

log = logging.getLogger("deployments.stack")

WORKER_COMMAND = [sys.executable, "-m", "deployments.worker"]


def stack_environment(settings: Settings) -> dict[str, str]:
    """Prefect offline (no analytics, no calls out) with its home inside the data directory, and a shared
    directory where every process keeps its Prometheus metrics for the gateway's `/metrics`."""
    return {
        "PROMETHEUS_MULTIPROC_DIR": str((settings.data_dir / "metrics").resolve()),
        "PREFECT_HOME": str((settings.data_dir / "prefect").resolve()),
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_UI_URL": settings.prefect_ui_url,
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "fulfillment",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        # Record task runs in batches: one write per batch instead of one per task run (measured in BENCHMARKS.md).
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "50",
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "50",
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    }


def up(settings: Settings, *, with_queue: bool = False, topology: Topology = ONE_OF_EACH) -> int:
    """`order-saga up`: runs the stack until Ctrl-C or SIGTERM; `with_queue`: with the local Service Bus, which
    the listener, the failure announcements and `order-saga submit --local` use; `topology`: how many of each
    process, and whether on PostgreSQL and Redis (deployments/scaled.py)."""
    refuse_open_exposure(settings)
    env = {**os.environ, **stack_environment(settings)}
    backends = None
    if topology.scaled:
        backends = scaled.find_backends(env)
        scaled.data_dir_reachable(settings, backends)
        env.update(scaled.scaled_environment(settings, env))
    if with_queue:
        env[settings.service_bus_connection_name] = local_queue_connection(settings)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    metrics = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(metrics, ignore_errors=True)  # the values of processes that are gone
    metrics.mkdir(parents=True)
    configure_logging()
    if backends is not None:
        scaled.prepare(settings, backends)
    children = [*([local_queue(settings)] if with_queue else []), *stack_children(settings, env, topology, backends)]
    return Supervisor(children, env, on_up=lambda: log.info(banner(settings, topology))).run()


def run_worker(settings: Settings) -> NoReturn:
    """`order-saga worker`: one more saga executor in the foreground, in the environment `up` gives its worker,
    against the stores and Prefect server of the running stack."""
    env = {**os.environ, **stack_environment(settings)}
    health = f"{settings.prefect_api_url.rstrip('/')}/health"
    try:
        httpx.get(health, timeout=5).raise_for_status()
    except httpx.HTTPError as error:
        raise SystemExit(f"order-saga worker: no Prefect server at {health} ({error}); "
                         "is `order-saga up` running?") from None
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)  # never wiped: `up` owns it
    os.execvpe(WORKER_COMMAND[0], WORKER_COMMAND, env)


def local_queue_connection(settings: Settings) -> str:
    from deployments.servicebus_broker import connection_string

    return connection_string(settings.local_service_bus_port)


def local_queue(settings: Settings) -> Child:
    """The local Service Bus of `--with-queue`, with the orders and order-failures queues."""
    return Child("local service bus", [sys.executable, "-m", "deployments.servicebus_broker",
                                       "--port", str(settings.local_service_bus_port),
                                       settings.orders_queue, settings.order_failures_queue])


def stack_children(settings: Settings, env: Mapping[str, str], topology: Topology = ONE_OF_EACH,
                   backends: scaled.Backends | None = None) -> list[Child]:
    from fulfillment.adapters.servicebus import client_factory

    listener = [sys.executable, "-m", "deployments.servicebus_listener"]
    gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
    services = [sys.executable, "-m", "gateway.services_server"]
    return [
        *prefect_children(settings, topology, backends),
        *([Child("embedded services", services, f"{services_url(settings)}/healthz")]
          if settings.embedded_services_port else []),
        *numbered("worker", WORKER_COMMAND, topology.executors),
        *(numbered("servicebus listener", listener, topology.listeners)
          if client_factory(settings, env) is not None else []),
        Child("gateway", [sys.executable, "-m", "gateway"], f"{gateway}/healthz"),
    ]


def numbered(name: str, command: Sequence[str], count: int) -> list[Child]:
    """`count` processes of one command, named `name`, `name 2`, `name 3`, ..."""
    return [Child(name if number == 1 else f"{name} {number}", command) for number in range(1, count + 1)]


def prefect_children(settings: Settings, topology: Topology, backends: scaled.Backends | None) -> list[Child]:
    """The Prefect server with its services in one process; scaled: PostgreSQL, Redis and the migrations, then
    the API in `api_workers` processes, then the services in their own."""
    api = urlsplit(settings.prefect_api_url)
    server = [sys.executable, "-m", "deployments.prefect_server",
              "--host", api.hostname or "127.0.0.1", "--port", str(api.port or 4200)]
    health = f"{settings.prefect_api_url.rstrip('/')}/health"
    if not topology.scaled:
        return [Child("prefect server", server, health, stop_signal=signal.SIGINT)]
    return [*scaled.backend_children(settings, backends),
            Child("prefect api", [*server, "--workers", str(topology.api_workers), "--no-services"], health,
                  stop_signal=signal.SIGINT),
            scaled.services_child()]


def services_url(settings: Settings) -> str:
    """Where `gateway.services_server` serves the embedded services: loopback, whatever the gateway's host."""
    return f"http://{EMBEDDED_SERVICES_HOST}:{settings.embedded_services_port}"


def banner(settings: Settings, topology: Topology = ONE_OF_EACH) -> str:
    gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
    services = (f"\n  services  {services_url(settings)}/inventory  /payments  /shipping  (loopback only)"
                if settings.embedded_services_port else "")
    return f"""
order-saga is up
  REST      {gateway}/api/orders
  GraphQL   {gateway}/graphql
  health    {gateway}/healthz  {gateway}/readyz{services}
  Prefect   {settings.prefect_ui_url}  (saga runs are named order-<orderId>){scale_line(topology)}
Press Ctrl-C to stop."""


def scale_line(topology: Topology) -> str:
    if not topology.scaled:
        return f"\n  executors {topology.executors}" if topology.executors > 1 else ""
    return (f"\n  scaled    {topology.api_workers} Prefect API processes + services on PostgreSQL and Redis, "
            f"{topology.executors} executors")

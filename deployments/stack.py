"""`order-saga up`: the whole stack on embedded defaults, its processes kept running and stopped cleanly together.

1. the Prefect server (SQLite, UI) on the host and port of `PREFECT_API_URL`;
2. the embedded downstream services over HTTP (`python -m gateway.services_server`) on 127.0.0.1 only, unless
   `EmbeddedServicesPort` is 0; served whether or not base URLs are set, so that they can point at it;
3. the saga worker (`python -m deployments.worker`), once the server answers;
4. the Service Bus listener, when a connection is configured;
5. the gateway (`python -m gateway`).

Once the stack is up, a process that exits is restarted after a back-off (1 s, doubling, at most 30 s; 1 s again
once it has stayed up 60 s); a restarted server is waited for, as at start-up, before anything else is restarted.
At start-up, a process that exits before it is ready fails the start: a configuration to fix, not a fault to heal.
Ctrl-C or SIGTERM stops them in reverse order.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import httpx

from fulfillment.logs import configure_logging
from fulfillment.settings import EMBEDDED_SERVICES_HOST, Settings, refuse_open_exposure

log = logging.getLogger("deployments.stack")

READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = 20
TICK_S = 0.1
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


def up(settings: Settings, *, with_queue: bool = False) -> int:
    """`order-saga up`: runs the stack until Ctrl-C or SIGTERM; `with_queue`: with the local Service Bus, which
    the listener, the failure announcements and `order-saga submit --local` use."""
    refuse_open_exposure(settings)
    env = {**os.environ, **stack_environment(settings)}
    if with_queue:
        env[settings.service_bus_connection_name] = local_queue_connection(settings)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    metrics = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(metrics, ignore_errors=True)  # the values of processes that are gone
    metrics.mkdir(parents=True)
    configure_logging()
    children = [*([local_queue(settings)] if with_queue else []), *stack_children(settings, env)]
    return Supervisor(children, env, on_up=lambda: log.info(banner(settings))).run()


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


@dataclass(frozen=True)
class Child:
    """A process of the stack, as data: how to start it, when it is ready, how to ask it to stop."""

    name: str
    command: Sequence[str]
    ready_url: str | None = None  # answers 200 once the process serves; None: ready once started
    stop_signal: signal.Signals = signal.SIGTERM


def local_queue_connection(settings: Settings) -> str:
    from deployments.servicebus_broker import connection_string

    return connection_string(settings.local_service_bus_port)


def local_queue(settings: Settings) -> Child:
    """The local Service Bus of `--with-queue`, with the orders and order-failures queues."""
    return Child("local service bus", [sys.executable, "-m", "deployments.servicebus_broker",
                                       "--port", str(settings.local_service_bus_port),
                                       settings.orders_queue, settings.order_failures_queue])


def stack_children(settings: Settings, env: Mapping[str, str]) -> list[Child]:
    from fulfillment.adapters.servicebus import client_factory

    api = urlsplit(settings.prefect_api_url)
    server = [sys.executable, "-m", "deployments.prefect_server",
              "--host", api.hostname or "127.0.0.1", "--port", str(api.port or 4200)]
    listener = [sys.executable, "-m", "deployments.servicebus_listener"]
    gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
    services = [sys.executable, "-m", "gateway.services_server"]
    return [
        Child("prefect server", server, f"{settings.prefect_api_url.rstrip('/')}/health", signal.SIGINT),
        *([Child("embedded services", services, f"{services_url(settings)}/healthz")]
          if settings.embedded_services_port else []),
        Child("worker", WORKER_COMMAND),
        *([Child("servicebus listener", listener)] if client_factory(settings, env) is not None else []),
        Child("gateway", [sys.executable, "-m", "gateway"], f"{gateway}/healthz"),
    ]


def services_url(settings: Settings) -> str:
    """Where `gateway.services_server` serves the embedded services: loopback, whatever the gateway's host."""
    return f"http://{EMBEDDED_SERVICES_HOST}:{settings.embedded_services_port}"


def banner(settings: Settings) -> str:
    gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
    services = (f"\n  services  {services_url(settings)}/inventory  /payments  /shipping  (loopback only)"
                if settings.embedded_services_port else "")
    return f"""
order-saga is up
  REST      {gateway}/api/orders
  GraphQL   {gateway}/graphql
  health    {gateway}/healthz  {gateway}/readyz{services}
  Prefect   {settings.prefect_ui_url}  (saga runs are named order-<orderId>)
Press Ctrl-C to stop."""


@dataclass(frozen=True)
class Backoff:
    """The wait before a child is restarted: `first_s`, doubled for each restart in a row, at most `max_s`.
    A child that stayed up `reset_after_s` before it exited is restarted after `first_s` again."""

    first_s: float = 1
    max_s: float = 30
    reset_after_s: float = 60

    def delay(self, in_a_row: int) -> float:
        return min(self.first_s * 2 ** min(in_a_row, 32), self.max_s)


@dataclass
class _Running:
    """A child and its current process."""

    child: Child
    process: subprocess.Popen | None = None
    started_at: float = 0
    restarts: int = 0
    in_a_row: int = 0
    restart_at: float | None = None  # set while the child waits for its restart


class Supervisor:
    """Starts the children in order, each once the previous one is ready; restarts a child that exits; on
    SIGINT or SIGTERM stops them all in reverse order and prints `stopped`."""

    def __init__(self, children: Sequence[Child], env: Mapping[str, str], *, backoff: Backoff = Backoff(),
                 ready_timeout_s: float = READY_TIMEOUT_S, stop_timeout_s: float = STOP_TIMEOUT_S,
                 on_up: Callable[[], None] = lambda: None):
        self._running = [_Running(child) for child in children]
        self._env = dict(env)
        self._backoff = backoff
        self._ready_timeout_s = ready_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._on_up = on_up
        self._stopping = False

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._start_all()
            self._on_up()
            self._supervise()
        except _Stop:
            return 0
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _start_all(self) -> None:
        for running in self._running:
            log.info(f"starting {running.child.name} ...")
            if not self._start(running):
                raise SystemExit(f"{running.child.name} exited with code {running.process.returncode} "
                                 "before the stack was up; stopping the stack")

    def _supervise(self) -> NoReturn:
        while True:
            for running in self._running:
                if running.restart_at is None and running.process.poll() is not None:
                    self._schedule_restart(running)
                elif running.restart_at is not None and time.monotonic() >= running.restart_at:
                    running.restart_at = None
                    self._start(running)  # if it fails, the next round sees it exited
            self._pause(TICK_S)

    def _schedule_restart(self, running: _Running) -> None:
        now = time.monotonic()
        if now - running.started_at >= self._backoff.reset_after_s:
            running.in_a_row = 0
        delay = self._backoff.delay(running.in_a_row)
        running.in_a_row += 1
        running.restarts += 1
        running.restart_at = now + delay
        log.warning(f"{running.child.name} exited with code {running.process.returncode}; "
                    f"restarting in {delay:g}s (restart {running.restarts})")

    def _start(self, running: _Running) -> bool:
        """Starts the child and waits until it is ready: False if it exited or did not get ready in time."""
        child = running.child
        running.process = subprocess.Popen(child.command, env=self._env, start_new_session=True)
        running.started_at = time.monotonic()
        if child.ready_url is None:
            return True
        deadline = running.started_at + self._ready_timeout_s
        while running.process.poll() is None:
            if time.monotonic() > deadline:
                log.error(f"{child.name} did not get ready within {self._ready_timeout_s:g}s ({child.ready_url})")
                running.process.kill()
                running.process.wait()
                return False
            try:
                if httpx.get(child.ready_url, timeout=1).status_code == 200:
                    log.info(f"{child.name} is ready")
                    return True
            except httpx.HTTPError:
                pass
            self._pause(0.3)
        return False

    def _pause(self, seconds: float) -> None:
        """Sleeps, in short naps so that a stop request is seen at once; raises `_Stop` on one."""
        deadline = time.monotonic() + seconds
        while not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, TICK_S))
        raise _Stop

    def _on_signal(self, signum: int, frame) -> None:
        self._stopping = True  # only a flag: raising here could leave a process just forked untracked

    def _stop_all(self) -> None:
        self._stopping = True
        for running in reversed(self._running):
            process = running.process
            if process is None or process.poll() is not None:
                continue
            log.info(f"stopping {running.child.name} ...")
            process.send_signal(running.child.stop_signal)
            try:
                process.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.info("stopped")


class _Stop(Exception):
    pass

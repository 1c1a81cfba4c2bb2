"""`order-saga up`: the whole stack on embedded defaults, in three processes, stopped cleanly together.

1. the Prefect server (SQLite, UI) on the host and port of `PREFECT_API_URL`;
2. the saga worker (`python -m deployments.worker`), once the server answers;
3. the gateway (`python -m gateway`).

Ctrl-C or SIGTERM stops them in reverse order; if one of them dies, the others are stopped too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from fulfillment.adapters.servicebus import client_factory
from fulfillment.settings import Settings

READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = 20


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


class Stack:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._env = {**os.environ, **stack_environment(settings)}
        self._processes: list[tuple[str, subprocess.Popen]] = []
        self._stopping = False

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        try:
            self._start_all()
            return self._watch()
        except _Stop:
            return 0
        finally:
            self._stop_all()

    def _start_all(self) -> None:
        settings = self._settings
        Path(self._env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
        metrics = Path(self._env["PROMETHEUS_MULTIPROC_DIR"])
        shutil.rmtree(metrics, ignore_errors=True)  # the values of processes that are gone
        metrics.mkdir(parents=True)
        api = urlsplit(settings.prefect_api_url)
        self._start("prefect server", [sys.executable, "-m", "deployments.prefect_server",
                                       "--host", api.hostname or "127.0.0.1", "--port", str(api.port or 4200)])
        self._wait_ready("prefect server", f"{settings.prefect_api_url.rstrip('/')}/health")
        self._start("worker", [sys.executable, "-m", "deployments.worker"])
        if client_factory(settings, os.environ) is not None:
            self._start("servicebus listener", [sys.executable, "-m", "deployments.servicebus_listener"])
        self._start("gateway", [sys.executable, "-m", "gateway"])
        gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
        self._wait_ready("gateway", f"{gateway}/healthz")
        print(f"""
order-saga is up
  REST      {gateway}/api/orders
  GraphQL   {gateway}/graphql
  health    {gateway}/healthz  {gateway}/readyz
  Prefect   {settings.prefect_ui_url}  (saga runs are named order-<orderId>)
Press Ctrl-C to stop.""", flush=True)

    def _start(self, name: str, command: list[str]) -> None:
        print(f"starting {name} ...", flush=True)
        self._processes.append((name, subprocess.Popen(command, env=self._env, start_new_session=True)))

    def _wait_ready(self, name: str, url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    print(f"{name} is ready", flush=True)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"{name} did not become ready within {READY_TIMEOUT_S}s ({url})")

    def _watch(self) -> int:
        while True:
            self._check_alive()
            time.sleep(0.5)

    def _check_alive(self) -> None:
        for name, process in self._processes:
            if process.poll() is not None and not self._stopping:
                raise SystemExit(f"{name} exited with code {process.returncode}; stopping the stack")

    def _on_signal(self, signum: int, frame) -> None:
        if not self._stopping:
            self._stopping = True
            raise _Stop

    def _stop_all(self) -> None:
        self._stopping = True
        for name, process in reversed(self._processes):
            if process.poll() is None:
                print(f"stopping {name} ...", flush=True)
                process.send_signal(signal.SIGINT if name == "prefect server" else signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        print("stopped", flush=True)


class _Stop(Exception):
    pass

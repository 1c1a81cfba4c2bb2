"""A throwaway PostgreSQL server for the benchmark's PostgreSQL leg: the cluster of deployments/postgres.py in a
temporary directory, on a free port, removed afterwards."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deployments.postgres import cluster_user, create_cluster, database_url, server_command
from deployments.supervisor import accepts_connections

START_TIMEOUT_S = 30


@contextmanager
def throwaway_postgres(bin_dir: Path, port: int) -> Iterator[str]:
    """Yields the SQLAlchemy URL of a new `prefect` database."""
    work = Path(tempfile.mkdtemp(prefix="order-saga-pg-"))
    work.chmod(0o755)  # the `postgres` user runs the cluster when this runs as root
    server = None
    try:
        create_cluster(bin_dir, work / "data")
        server = subprocess.Popen(server_command(bin_dir, work / "data", port), user=cluster_user(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, server)
        yield database_url(port)
    finally:
        if server is not None:
            server.terminate()  # SIGTERM: PostgreSQL's smart shutdown, the clients are gone by now
            server.wait(60)
        shutil.rmtree(work, ignore_errors=True)


def wait_for_port(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not accepts_connections(port):
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL did not start on port {port}")
        time.sleep(0.2)

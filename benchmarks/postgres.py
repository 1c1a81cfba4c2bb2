"""A throwaway PostgreSQL server for the benchmark's PostgreSQL leg, from the machine's own installation.

Debian's `postgresql` package (see the README) provides the binaries; the server runs as the `postgres`
user when this runs as root, in a temporary directory, on a free port, and is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def postgres_bin_dir() -> Path | None:
    """Where initdb and pg_ctl are, or None when PostgreSQL is not installed."""
    if pg_config := shutil.which("pg_config"):
        candidate = Path(subprocess.check_output([pg_config, "--bindir"], text=True).strip())
        if (candidate / "initdb").exists():
            return candidate
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return installed[-1].parent if installed else None


@contextmanager
def throwaway_postgres(bin_dir: Path, port: int) -> Iterator[str]:
    """Yields an SQLAlchemy URL of a new database with the pg_trgm extension that Prefect needs."""
    work = Path(tempfile.mkdtemp(prefix="order-saga-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(work, "postgres")
    data = work / "data"
    run = lambda *command: subprocess.run([*as_postgres, *command], check=True, capture_output=True)  # noqa: E731
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(work / "log"), "-w", "-o",
            f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c fsync=on", "start")
        try:
            psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-q"]
            subprocess.run([*psql, "-c", "CREATE DATABASE prefect"], check=True, capture_output=True)
            subprocess.run([*psql, "-d", "prefect", "-c", "CREATE EXTENSION pg_trgm"], check=True, capture_output=True)
            yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
    finally:
        shutil.rmtree(work, ignore_errors=True)

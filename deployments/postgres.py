"""A PostgreSQL cluster for Prefect from the machine's own installation: found, created once, and served.

The scaled profile (`order-saga up --profile scaled`) keeps its cluster in the data directory; the benchmark
makes a throwaway one. Nothing is downloaded: without PostgreSQL's binaries, `INSTALL_HINT` says in one line how
to install them. PostgreSQL refuses to run as root, so when this runs as root the cluster belongs to the
`postgres` user that Debian's package creates, and each directory above the cluster must let that user through.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

DATABASE = "prefect"
INSTALL_HINT = ("PostgreSQL not found: install it with `apt-get install postgresql` (Debian, Ubuntu) or "
                "`brew install postgresql` (macOS), or point PREFECT_API_DATABASE_CONNECTION_URL at a server")


def postgres_bin_dir() -> Path | None:
    """Where initdb and postgres are, or None when PostgreSQL is not installed."""
    if pg_config := shutil.which("pg_config"):
        candidate = Path(subprocess.check_output([pg_config, "--bindir"], text=True).strip())
        if (candidate / "initdb").exists():
            return candidate
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if installed:
        return installed[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def cluster_user() -> str | None:
    """Who runs the cluster: the `postgres` user when this process is root, else this process's user."""
    return "postgres" if os.geteuid() == 0 else None


def create_cluster(bin_dir: Path, data: Path) -> None:
    """Creates the cluster in `data` with the `prefect` database, unless it is there already. Trust
    authentication, since the server listens on 127.0.0.1 only."""
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    user = cluster_user()
    if user:
        shutil.chown(data, user)
    run = dict(check=True, capture_output=True, user=user)
    subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"], **run)
    # single-user mode: the database exists before the server first starts, with no client and no port
    subprocess.run([str(bin_dir / "postgres"), "--single", "-D", str(data), "postgres"],
                   input=f"CREATE DATABASE {DATABASE};\n".encode(), **run)


def server_command(bin_dir: Path, data: Path, port: int) -> list[str]:
    """The server in the foreground, on 127.0.0.1:`port` only (no Unix socket), with room for several API
    processes and executors."""
    return [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=", "-c", "max_connections=200", "-c", "log_min_messages=warning"]


def database_url(port: int) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{DATABASE}"

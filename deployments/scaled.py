"""`order-saga up --profile scaled`: Prefect's documented self-hosted scale-out, on one machine.

- PostgreSQL for Prefect (the machine's binaries; the cluster in `<DataDir>/postgres`, port
  `OrderProcessing__PostgresPort`), unless `PREFECT_API_DATABASE_CONNECTION_URL` names a server already;
- Redis (the machine's `redis-server`; `<DataDir>/redis`, port `OrderProcessing__RedisPort`) for Prefect's
  messaging, event ordering, concurrency leases and background-service coordination (`prefect-redis`), unless
  `PREFECT_REDIS_MESSAGING_HOST` names one already;
- Prefect's migrations and block types, once, before any API process starts (deployments/prefect_database.py);
- the Prefect API and UI in `--api-workers` uvicorn processes without background services, and the background
  services in one process of their own (`prefect server services start`);
- `--executors` saga executors and the gateway in `OrderProcessing__GatewayWorkers` processes (2 unless set).

The order store stays what the settings say: the SQLite default serves every process of one host; several
hosts need Cosmos DB (README, "Scaling out").
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deployments import postgres
from deployments.supervisor import Child
from fulfillment.settings import Settings

REDIS_HINT = ("redis-server not found: install it with `apt-get install redis-server` (Debian, Ubuntu) or "
              "`brew install redis` (macOS), or point PREFECT_REDIS_MESSAGING_HOST at a server")
DATABASE_URL = "PREFECT_API_DATABASE_CONNECTION_URL"
REDIS_HOST = "PREFECT_REDIS_MESSAGING_HOST"


@dataclass(frozen=True)
class Topology:
    """How many of each process `order-saga up` starts; `scaled`: on PostgreSQL and Redis."""

    executors: int = 1
    api_workers: int = 1
    scaled: bool = False
    listeners: int = 1  # Service Bus listeners, competing consumers of the orders queue (when one is configured)

    def __post_init__(self):
        if self.executors < 1 or self.api_workers < 1 or self.listeners < 1:
            raise SystemExit("order-saga up: --executors and --api-workers must be at least 1")
        if self.api_workers > 1 and not self.scaled:
            raise SystemExit("order-saga up: --api-workers needs --profile scaled (several Prefect API "
                             "processes need PostgreSQL and Redis)")


ONE_OF_EACH = Topology()  # `order-saga up` with no options


@dataclass(frozen=True)
class Backends:
    """The PostgreSQL and Redis servers the profile starts itself (None: the environment names one)."""

    postgres_bin: Path | None
    redis_server: str | None


def find_backends(environ: Mapping[str, str]) -> Backends:
    """The binaries of the servers to start, or exits with one line saying how to install what is missing."""
    postgres_bin = redis_server = None
    if not environ.get(DATABASE_URL):
        postgres_bin = postgres.postgres_bin_dir()
        if postgres_bin is None:
            raise SystemExit(f"order-saga up --profile scaled: {postgres.INSTALL_HINT}")
    if not environ.get(REDIS_HOST):
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise SystemExit(f"order-saga up --profile scaled: {REDIS_HINT}")
    return Backends(postgres_bin, redis_server)


def scaled_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The settings Prefect's self-hosted guide asks of every server process, and the gateway's worker count;
    what the environment sets already wins."""
    redis_host = environ.get(REDIS_HOST, "127.0.0.1")
    ours = REDIS_HOST not in environ
    redis_port = environ.get("PREFECT_REDIS_MESSAGING_PORT", str(settings.redis_port) if ours else "6379")
    redis_db = environ.get("PREFECT_REDIS_MESSAGING_DB", "0")
    wanted = {
        DATABASE_URL: postgres.database_url(settings.postgres_port),
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        REDIS_HOST: redis_host,
        "PREFECT_REDIS_MESSAGING_PORT": redis_port,
        "PREFECT_REDIS_MESSAGING_DB": redis_db,
        "PREFECT_SERVER_DOCKET_URL": f"redis://{redis_host}:{redis_port}/{redis_db}",
        # Each Prefect process keeps 20 connections instead of SQLAlchemy's 5: with 5, a burst opened and closed
        # PostgreSQL connections all the time (a backend forked, catalogs read, statements prepared again), and
        # PostgreSQL burnt twice the CPU per saga (docs/prefect-cpu.md). At most (API processes + 1) x (20 + 10
        # overflow) connections: 90 by default, within the 200 that deployments/postgres.py allows.
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "20",
        # deployments.prefect_database does both once; API processes starting together would race to
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
        "OrderProcessing__GatewayWorkers": "2",
    }
    return {name: environ.get(name, value) for name, value in wanted.items()}


def prepare(settings: Settings, backends: Backends) -> None:
    """Creates the PostgreSQL cluster and the Redis directory on first use."""
    if backends.postgres_bin is not None:
        postgres.create_cluster(backends.postgres_bin, postgres_data(settings))
    if backends.redis_server is not None:
        redis_data(settings).mkdir(parents=True, exist_ok=True)


def postgres_data(settings: Settings) -> Path:
    return (settings.data_dir / "postgres").resolve()


def redis_data(settings: Settings) -> Path:
    return (settings.data_dir / "redis").resolve()


def backend_children(settings: Settings, backends: Backends) -> list[Child]:
    """PostgreSQL and Redis, each ready once it accepts connections, then the database step."""
    children = []
    if backends.postgres_bin is not None:
        children.append(Child("postgresql", postgres.server_command(backends.postgres_bin, postgres_data(settings),
                                                                   settings.postgres_port),
                              ready_port=settings.postgres_port, user=postgres.cluster_user()))
    if backends.redis_server is not None:
        children.append(Child("redis", [backends.redis_server, "--port", str(settings.redis_port),
                                        "--bind", "127.0.0.1", "--dir", str(redis_data(settings)),
                                        "--appendonly", "yes", "--save", "", "--loglevel", "warning"],
                              ready_port=settings.redis_port))
    children.append(Child("prefect database", [sys.executable, "-m", "deployments.prefect_database"], one_shot=True))
    return children


def services_child() -> Child:
    """Prefect's background services (scheduler, late runs, task-run recorder, event persister, triggers, ...)
    in one process, fed by the API processes through Redis.

    Without the event stream distributor: `prefect server services start` runs it too, but it only feeds the
    `/events/out` websockets of its own process, and this one serves no HTTP. It read every event from Redis for
    nobody, 4 ms of CPU per saga (docs/prefect-cpu.md); the API processes keep theirs."""
    return Child("prefect services", [sys.executable, "-m", "prefect", "server", "services", "start"],
                 stop_signal=signal.SIGINT, environment=(("PREFECT_SERVER_EVENTS_STREAM_OUT_ENABLED", "false"),))


def data_dir_reachable(settings: Settings, backends: Backends) -> None:
    """As root, PostgreSQL runs as `postgres`, which must reach its cluster through every directory above it."""
    if backends.postgres_bin is None or postgres.cluster_user() is None:
        return
    for directory in [postgres_data(settings).parent, *postgres_data(settings).parent.parents]:
        if directory.exists() and not os.stat(directory).st_mode & 0o001:
            raise SystemExit(f"order-saga up --profile scaled: {directory} is closed to the `postgres` user that "
                             f"runs PostgreSQL (as root); open it (chmod o+x) or set OrderProcessing__DataDir "
                             "elsewhere")

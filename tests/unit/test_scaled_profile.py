"""`order-saga up --profile scaled` as an operator meets it before anything starts: what it starts, in which
order, with which Prefect settings, and one line saying what to install when a server is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployments import scaled
from deployments.scaled import Backends, Topology
from deployments.stack import stack_children
from fulfillment.settings import Settings

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def test_the_servers_then_the_database_step_then_the_api_processes_then_the_services_then_ours(tmp_path):
    settings = Settings(data_dir=tmp_path, embedded_services_port=0)
    backends = Backends(postgres_bin=Path("/usr/lib/postgresql/15/bin"), redis_server="/usr/bin/redis-server")

    queue = {"ServiceBusConnection": "Endpoint=sb://127.0.0.1:5672/;SharedAccessKeyName=k;SharedAccessKey=s;"
                                     "UseDevelopmentEmulator=true"}
    topology = Topology(executors=3, api_workers=2, scaled=True, listeners=2)

    children = stack_children(settings, queue, topology, backends)

    assert [child.name for child in children] == [
        "postgresql", "redis", "prefect database", "prefect api", "prefect services",
        "worker", "worker 2", "worker 3", "servicebus listener", "servicebus listener 2", "gateway"]
    database, api = children[2], children[3]
    assert database.one_shot and database.command[1:] == ["-m", "deployments.prefect_database"]
    assert api.command[-3:] == ["--workers", "2", "--no-services"] and api.ready_url.endswith("/api/health")
    assert children[0].ready_port == settings.postgres_port and children[1].ready_port == settings.redis_port


def test_servers_named_by_the_environment_are_used_instead_of_started(tmp_path):
    settings = Settings(data_dir=tmp_path, embedded_services_port=0)
    environ = {"PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://prefect@db.internal/prefect",
               "PREFECT_REDIS_MESSAGING_HOST": "redis.internal"}

    backends = scaled.find_backends(environ)
    env = scaled.scaled_environment(settings, environ)
    children = stack_children(settings, env, Topology(scaled=True), backends)

    assert backends == Backends(None, None)
    assert [child.name for child in children][:3] == ["prefect database", "prefect api", "prefect services"]
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"] == environ["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert env["PREFECT_SERVER_DOCKET_URL"] == "redis://redis.internal:6379/0"  # Redis's port, not ours
    assert env["PREFECT_MESSAGING_BROKER"] == env["PREFECT_MESSAGING_CACHE"] == "prefect_redis.messaging"
    assert env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == "prefect_redis.lease_storage"
    assert env["PREFECT_SERVER_EVENTS_CAUSAL_ORDERING"] == "prefect_redis.ordering"
    assert env["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] == "false"


def test_the_settings_it_gives_prefect_are_settings_prefect_reads(tmp_path, monkeypatch):
    """A misspelt name would be ignored by Prefect and leave the in-memory broker in place."""
    env = scaled.scaled_environment(Settings(data_dir=tmp_path), {})
    for name, value in env.items():
        if name.startswith("PREFECT_"):
            monkeypatch.setenv(name, value)
    from prefect.settings import get_current_settings
    from prefect.settings.models.root import Settings as PrefectSettings

    loaded = PrefectSettings()
    assert loaded.server.events.messaging_broker == "prefect_redis.messaging"
    assert loaded.server.events.messaging_cache == "prefect_redis.messaging"
    assert loaded.server.events.causal_ordering == "prefect_redis.ordering"
    assert loaded.server.concurrency.lease_storage == "prefect_redis.lease_storage"
    assert loaded.server.docket.url == env["PREFECT_SERVER_DOCKET_URL"]
    assert loaded.server.database.migrate_on_start is False
    assert loaded.server.register_blocks_on_start is False
    assert get_current_settings() is not None


@pytest.mark.parametrize(("topology", "message"), [
    ({"api_workers": 2}, "--api-workers needs --profile scaled"),
    ({"executors": 0}, "--executors and --api-workers must be at least 1"),
])
def test_a_topology_that_cannot_run_is_refused_in_one_line(topology, message):
    with pytest.raises(SystemExit, match=message):
        Topology(**topology)


def test_a_missing_server_is_named_with_how_to_install_it_in_one_line(tmp_path):
    """With no redis-server on the PATH (and no Redis named), `up --profile scaled` says what to install."""
    path = tmp_path / "bin"
    path.mkdir()
    env = {**os.environ, "PATH": str(path), "OrderProcessing__DataDir": str(tmp_path / "var"),
           "PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://prefect@127.0.0.1:1/prefect"}
    done = subprocess.run([str(BIN / "order-saga"), "up", "--profile", "scaled"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "order-saga up --profile scaled: redis-server not found: install it with `apt-get install redis-server` "
        "(Debian, Ubuntu) or `brew install redis` (macOS), or point PREFECT_REDIS_MESSAGING_HOST at a server"]

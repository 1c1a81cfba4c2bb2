"""The two places where order-saga changes Prefect's internals, one function each.

Both reach into modules that Prefect does not promise to keep, so tests/integration/test_prefect_patches.py pins
each one to the installed Prefect: an upgrade that moves a target, changes its signature or makes the patch stop
taking effect fails a test instead of silently undoing the patch. pyproject.toml pins Prefect to the minor version
those tests ran against. Prefect is imported inside each function, so a process loads only what it patches.
"""

from __future__ import annotations

import contextlib
import functools


def immediate_sqlite_transactions() -> None:
    """Every SQLite transaction of the Prefect server starts with `BEGIN IMMEDIATE`: a writer waits for the lock
    instead of failing. For the server process, before it starts (`deployments.prefect_server`).

    Prefect's server opens SQLite write transactions as `BEGIN DEFERRED`. A read-then-write transaction (creating
    a flow run, recording a task run) that meets another writer then fails at once with SQLITE_BUSY, which the
    API answers with 503 and the client retries after 2, 4, 8, 16, 32 s (PrefectHQ/prefect#18934): sagas stall
    for tens of seconds under load. The server's own `BEGIN IMMEDIATE` path (`with_for_update=True`) takes the
    write lock up front and waits for it (busy_timeout); this sends every transaction down that path.
    PostgreSQL (`PREFECT_API_DATABASE_CONNECTION_URL`) uses another configuration class and is unaffected.
    """
    from prefect.server.database.configurations import AioSqliteConfiguration

    begin_transaction = AioSqliteConfiguration.begin_transaction

    @functools.wraps(begin_transaction)
    def begin_immediate_transaction(self, session, with_for_update: bool = False):
        return begin_transaction(self, session, with_for_update=True)

    AioSqliteConfiguration.begin_transaction = begin_immediate_transaction


def skip_suspension_observers() -> None:
    """Flow runs of a deployment executed in this process start no suspension observer. For the worker.

    For each run of a deployment, Prefect starts a thread with its own event loop, API client and events
    websocket, only to notice a request to suspend the run. Sagas are never suspended (they are cancelled
    through the order service and compensate), and on 2 cores those threads cost a third of the worker's
    CPU (profile in BENCHMARKS.md), so the worker's runs go without them. The engine looks the observer up
    as a global of `prefect.flow_engine` on each run, so replacing that global is enough.
    """
    from prefect import flow_engine

    if not hasattr(flow_engine, "observe_flow_run_suspension"):  # setting it would then change nothing
        raise RuntimeError("prefect.flow_engine.observe_flow_run_suspension is gone: the engine changed, "
                           "see deployments/prefect_patches.py")
    flow_engine.observe_flow_run_suspension = no_suspension_observer


def no_suspension_observer(*args, **kwargs) -> contextlib.AbstractContextManager[None]:
    """What a deployment run of the worker starts instead of a suspension observer: nothing."""
    return contextlib.nullcontext()

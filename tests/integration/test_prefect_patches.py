"""The two patches of Prefect's internals (deployments/prefect_patches.py) against the installed Prefect: each test
fails when a target moves, changes its signature, or the patch stops taking effect."""

from __future__ import annotations

import contextlib
import dis
import inspect
import sqlite3
import threading
from uuid import uuid4

import pytest
import sqlalchemy as sa
from prefect import flow, flow_engine
from prefect._flow_run_suspension import FlowRunSuspensionRequest
from prefect.client.schemas.objects import FlowRun
from prefect.flow_engine import AsyncFlowRunEngine, run_flow_async
from prefect.server.database.configurations import AioSqliteConfiguration
from prefect.server.database.interface import PrefectDBInterface

from deployments import prefect_patches
from deployments.prefect_patches import immediate_sqlite_transactions, skip_suspension_observers


@pytest.fixture(autouse=True)
def unpatched_afterwards(monkeypatch):
    """Whatever a test patches is put back: monkeypatch restores what it set, here the originals."""
    monkeypatch.setattr(AioSqliteConfiguration, "begin_transaction", AioSqliteConfiguration.begin_transaction)
    monkeypatch.setattr(flow_engine, "observe_flow_run_suspension", flow_engine.observe_flow_run_suspension)


def loaded(function, *opnames: str) -> set[str]:
    """The names that `function`'s own code loads with the given instructions (LOAD_GLOBAL, LOAD_ATTR, ...)."""
    return {instruction.argval for instruction in dis.get_instructions(inspect.unwrap(function).__code__)
            if instruction.opname in opnames}


ATTRIBUTES = ("LOAD_ATTR", "LOAD_METHOD")


# immediate_sqlite_transactions


def test_the_server_opens_its_transactions_through_the_patched_method_with_the_same_parameters():
    assert "begin_transaction" in loaded(PrefectDBInterface.session_context, *ATTRIBUTES)
    assert list(inspect.signature(AioSqliteConfiguration.begin_transaction).parameters) == [
        "self", "session", "with_for_update"]


async def first_transaction(tmp_path) -> tuple[list[str], Exception | None]:
    """Opens a transaction as the server does (no `with_for_update`) through Prefect's SQLite configuration, reads,
    and before writing tries a write from a second connection that does not wait. Returns the statements the
    first connection sent and the error of the second writer, if any."""
    path = tmp_path / "prefect.db"
    with contextlib.closing(sqlite3.connect(path)) as setup:
        setup.execute("CREATE TABLE t (n INTEGER)")
    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{path}")
    engine = await config.engine()
    statements: list[str] = []
    sa.event.listen(engine.sync_engine, "before_cursor_execute",
                    lambda connection, cursor, statement, *args: statements.append(statement))
    second_writer_error = None
    try:
        async with await config.session(engine) as session, config.begin_transaction(session):
            await session.execute(sa.text("SELECT count(*) FROM t"))
            with contextlib.closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as second:
                try:
                    second.execute("INSERT INTO t VALUES (1)")
                except sqlite3.OperationalError as error:
                    second_writer_error = error
    finally:
        await engine.dispose()
    return statements, second_writer_error


async def test_after_the_patch_every_transaction_begins_immediate_and_holds_the_write_lock_before_writing(tmp_path):
    immediate_sqlite_transactions()

    statements, second_writer_error = await first_transaction(tmp_path)

    assert "BEGIN IMMEDIATE" in statements
    assert second_writer_error is not None and "locked" in str(second_writer_error)


async def test_without_the_patch_prefect_still_begins_deferred_so_the_patch_is_still_needed(tmp_path):
    statements, second_writer_error = await first_transaction(tmp_path)

    assert "BEGIN DEFERRED" in statements
    assert second_writer_error is None


# skip_suspension_observers


def test_a_deployment_run_looks_the_suspension_observer_up_as_a_global_of_the_flow_engine():
    # the path of the worker: run_flow_async -> AsyncFlowRunEngine.start -> setup_flow_run_suspension_request
    assert "AsyncFlowRunEngine" in loaded(run_flow_async, "LOAD_GLOBAL")
    assert "start" in loaded(run_flow_async, *ATTRIBUTES)
    assert "setup_flow_run_suspension_request" in loaded(AsyncFlowRunEngine.start, *ATTRIBUTES)
    setup = AsyncFlowRunEngine.setup_flow_run_suspension_request
    assert "observe_flow_run_suspension" in loaded(setup, "LOAD_GLOBAL")
    assert inspect.unwrap(setup).__globals__ is vars(flow_engine)
    import prefect._flow_run_suspension as suspension

    # the original, or the patch when an executor ran in this test process before
    assert flow_engine.observe_flow_run_suspension in (suspension.observe_flow_run_suspension,
                                                       prefect_patches.no_suspension_observer)
    assert list(inspect.signature(suspension.observe_flow_run_suspension).parameters) == [
        "flow_run_id", "suspension_request", "polling_interval"]


@flow
def a_flow() -> None:
    pass


def a_deployment_run_engine() -> AsyncFlowRunEngine:
    engine = AsyncFlowRunEngine(flow=a_flow)
    engine.flow_run = FlowRun(flow_id=uuid4(), deployment_id=uuid4())
    return engine


def test_the_engine_calls_whatever_the_global_names_when_a_deployment_run_starts(monkeypatch):
    observed = []
    monkeypatch.setattr(flow_engine, "observe_flow_run_suspension",
                        lambda flow_run_id, request: observed.append(flow_run_id) or contextlib.nullcontext())
    engine = a_deployment_run_engine()

    with engine.setup_flow_run_suspension_request():
        pass

    assert observed == [engine.flow_run.id]


def test_after_the_patch_a_deployment_run_starts_no_observer_thread():
    skip_suspension_observers()
    threads = threading.enumerate()

    # checked first: Prefect's own observer would wait for a connection to the API in the run below
    observer = flow_engine.observe_flow_run_suspension(uuid4(), FlowRunSuspensionRequest(), polling_interval=10)
    assert isinstance(observer, contextlib.nullcontext)
    with a_deployment_run_engine().setup_flow_run_suspension_request():
        assert threading.enumerate() == threads


def test_the_patch_fails_loudly_if_the_global_is_gone(monkeypatch):
    monkeypatch.delattr(flow_engine, "observe_flow_run_suspension")

    with pytest.raises(RuntimeError, match="observe_flow_run_suspension"):
        skip_suspension_observers()

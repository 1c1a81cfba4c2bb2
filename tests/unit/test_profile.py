"""benchmarks/profile.py's reading of py-spy's collapsed stacks: threads, SQLAlchemy's labelled greenlets, the
sharing of each thread's CPU among its samples, and what the tables call each sample."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

import pytest

from benchmarks.profile import (
    NO_PYTHON,
    Frame,
    api_routes,
    component,
    label_greenlets,
    layer,
    read_raw,
    route_calls,
    spawned_from,
    thread_weights,
)

HANDLER = "set_flow_run_state (prefect/server/api/flow_runs.py:310)"
RAW = f"""\
thread (100): MainThread;run (asyncio/runners.py:190);{HANDLER};Session.execute (sqlalchemy/orm/session.py:2555) 6
thread (100): MainThread;run (asyncio/runners.py:190);_run_once (asyncio/base_events.py:1900);EpollSelector.select (selectors.py:468) 10
thread (100): MainThread;spawned_from|prefect/server/api/flow_runs.py:set_flow_run_state|sqlalchemy/ext/asyncio/session.py:AsyncSession.execute (benchmarks/profile.py:290);Session.execute (sqlalchemy/orm/session.py:2555) 2
thread (200): Thread-1 (_connection_worker_thread);Thread.run (threading.py:982);_connection_worker_thread (aiosqlite/core.py:59) 40
"""


@pytest.fixture
def stacks(tmp_path):
    path = tmp_path / "1.raw"
    path.write_text(RAW)
    return read_raw(path)


def test_samples_are_read_by_thread_and_greenlets_get_the_frames_that_spawned_them(stacks):
    assert set(stacks) == {100, 200}
    assert sum(stacks[100].values()) == 18
    greenlet = next(frames for frames in stacks[100] if frames[0].file == "prefect/server/api/flow_runs.py")
    assert greenlet == (Frame("set_flow_run_state", "prefect/server/api/flow_runs.py"),
                        Frame("AsyncSession.execute", "sqlalchemy/ext/asyncio/session.py"),
                        Frame("Session.execute", "sqlalchemy/orm/session.py"))


def test_each_thread_s_cpu_goes_to_its_busy_samples_and_a_thread_without_samples_is_kept(stacks):
    weights = thread_weights(stacks, before={100: 1.0, 200: 0.0, 300: 0.0}, after={100: 2.6, 200: 0.4, 300: 0.2},
                             process_seconds=2.2)
    assert sum(weights.values()) == pytest.approx(2.2)
    waiting = next(frames for frames in stacks[100] if frames[-1].function == "EpollSelector.select")
    assert weights[waiting] == 0  # the thread had busy samples: its waits get none of its CPU
    assert weights[(NO_PYTHON,)] == pytest.approx(0.2)
    assert sum(seconds for frames, seconds in weights.items() if frames[-1].file == "aiosqlite/core.py") == \
        pytest.approx(0.4)


def test_cpu_of_threads_gone_by_the_end_goes_to_their_samples(stacks):
    weights = thread_weights(stacks, before={100: 1.0}, after={100: 2.0}, process_seconds=1.5)
    assert sum(weights.values()) == pytest.approx(1.5)
    assert sum(seconds for frames, seconds in weights.items() if frames[-1].file == "aiosqlite/core.py") == \
        pytest.approx(0.5)


def test_samples_are_named_by_route_service_and_layer(stacks):
    routes = {("prefect/server/api/flow_runs.py", "set_flow_run_state"): "POST /flow_runs/{id:uuid}/set_state"}
    names = Counter()
    for frames, count in stacks[100].items():
        names[component(frames, "prefect api", routes), layer(frames)] += count
    assert names[("API `POST /flow_runs/{id:uuid}/set_state`", "SQLAlchemy")] == 8
    recorder = (Frame("Consumer._consume_loop", "prefect/server/utilities/messaging/memory.py"),
                Frame("consumer.<locals>.message_handler", "prefect/server/services/task_run_recorder.py"),
                Frame("BaseModel.model_validate_json", "pydantic/main.py"), Frame("wrapper", "functools.py"))
    assert component(recorder, "prefect services", routes) == "service: task-run recorder"
    assert layer(recorder) == "pydantic"
    assert component((Frame("_connection_worker_thread", "aiosqlite/core.py"),), "prefect server", routes) \
        .startswith("SQLite")


def test_the_routes_are_those_of_prefect_s_api_and_match_the_executor_s_counter():
    routes = api_routes()
    assert routes["prefect/server/api/flow_runs.py", "set_flow_run_state"] == "POST /flow_runs/{id:uuid}/set_state"
    assert routes["prefect/server/api/events.py", "stream_events_in"] == "WS /events/in"
    calls = {"POST flow_runs/:id/set_state": 2.0, "POST work_pools/order-saga/get_scheduled_flow_runs": 0.5,
             "POST flow_runs/filter": 0.2}
    assert route_calls("API `POST /flow_runs/{id:uuid}/set_state`", calls) == 2.0
    assert route_calls("API `POST /work_pools/{name}/get_scheduled_flow_runs`", calls) == 0.5
    assert route_calls("API `WS /events/in`", calls) is None


def test_a_labelled_greenlet_starts_through_a_function_named_after_its_spawner():
    from sqlalchemy.util import concurrency

    shim = concurrency._concurrency_shim
    shim._initialize()
    original = shim._AsyncIoGreenlet
    seen = []

    def body():
        seen.append(sys._getframe(1).f_code.co_name)
        return 42

    async def spawner():
        return await concurrency.greenlet_spawn(body)

    try:
        label_greenlets()
        assert asyncio.run(spawner()) == 42
    finally:
        shim._AsyncIoGreenlet = original
    frames = spawned_from((Frame(seen[0], "benchmarks/profile.py"), Frame("body", "test_profile.py")))
    assert [frame.function.rpartition(".")[2] for frame in frames][-2:] == ["spawner", "body"]

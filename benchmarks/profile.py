"""Where the stack's CPU goes per saga: py-spy profiles of the Prefect API, its services and the executors during
a burst of orders, split into categories a reader can act on (docs/prefect-cpu.md).

    python -m benchmarks.profile [--scaled] [--orders N] [--bursts N] [--env NAME=VALUE ...] [--keep DIR]
    python -m benchmarks.profile [--scaled] --variant LABEL:NAME=VALUE,... [--variant ...] [--rounds N]
    python -m benchmarks.profile --tables-from DIR/burst-1/profile.json

starts the stack as `order-saga up` (or `order-saga up --profile scaled`) does, posts a warm-up and then a burst
of orders, and prints markdown tables: CPU-ms per saga of every process kind (PostgreSQL's and Redis's
included), and for each profiled process kind the same CPU split by what it was for (API route, service, ...)
and by layer (the library of the innermost frame: SQLAlchemy, pydantic, ...), the CPU of each API route per
call, and the events stored per saga. `--variant` compares Prefect settings instead (no py-spy: a stack per
variant, in turn, `--rounds` times), with what Redis and PostgreSQL counted per saga.

How the numbers are made: each process's CPU comes from /proc (utime + stime), per thread; py-spy samples say
how each thread spent it. A thread's CPU over the burst is shared among its samples, so a thread that mostly
waits (aiosqlite's, anyio's worker threads) weighs what it burnt, not how often it was sampled; samples whose
innermost frame is a wait (select, a lock, a queue) are left out where the thread has others. The CPU is taken
from just before the burst until the stack is quiet again (services such as the task-run recorder and the event
persister work on after the last order ends); `idle CPU/s` says what the stack burns when nothing happens.

For `benchmarks/run.py`: start the `Stack` with `greenlet_env(os.environ)` in its environment (else the
database work of the API is "SQLAlchemy (caller unknown)"), then `profile_burst(stack, orders, directory)`
profiles a burst and returns a `Profile` (`directory=None`: CPU from /proc only); `markdown(profile)` gives its
tables. py-spy needs ptrace rights over the stack's processes (root, or the same user with ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

PY_SPY_RATE = 67  # samples/s per process: not a multiple of the 100 Hz clock, enough for a 40 s burst
QUIET_CPU_PER_S = 0.1  # the stack counts as quiet once it burns less than its idle rate + this per second ...
QUIET_SECONDS = 2  # ... this many seconds in a row
QUIET_TIMEOUT = 60
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the stack's processes -----------------------------------------------------------------------



def kind_of(pid: int) -> str | None:
    """What a process of the stack is, from its command line; None for one not to count (uvicorn's manager
    and multiprocessing's resource tracker are counted under their own names)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    command = " ".join(part.decode(errors="replace") for part in argv)
    if "multiprocessing.resource_tracker" in command:
        return "resource tracker"
    if "multiprocessing.spawn" in command:  # a uvicorn worker: what its parent serves
        parent = _parent(pid)
        parent_kind = kind_of(parent) if parent else None
        return {"prefect api (manager)": "prefect api", "gateway (manager)": "gateway"}.get(parent_kind or "",
                                                                                           "spawned")
    if "deployments.prefect_server" in command:
        if spawned_children(pid):
            return "prefect api (manager)"
        return "prefect api" if "--no-services" in command else "prefect server"
    if "server services start" in command:
        return "prefect services"
    if "deployments.worker" in command:
        return "executor"
    if "-m gateway" in command:
        return "gateway (manager)" if spawned_children(pid) else "gateway"
    name = Path(argv[0].decode(errors="replace")).name
    if name == "postgres" or command.startswith("postgres:"):
        return "postgresql"
    if name.startswith("redis-server"):
        return "redis"
    return name or None


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (none once it has exited)."""
    children = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(child) for child in (task / "children").read_text().split()]
    return children


def spawned_children(pid: int) -> list[int]:
    """uvicorn's worker processes under `pid`: its children started by multiprocessing's spawn (not its
    resource tracker)."""
    found = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            if b"multiprocessing.spawn" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found


def stack_processes(root: int) -> dict[int, str]:
    """Every process under `root` (the `order-saga up` supervisor, not counted) with its kind."""
    found = {}
    pending = children(root)
    while pending:
        pid = pending.pop()
        kind = kind_of(pid)
        if kind is not None:
            found[pid] = kind
        pending += children(pid)
    return found


# --- CPU from /proc ------------------------------------------------------------------------------

def _stat_fields(path: Path) -> list[str]:
    return path.read_text().rsplit(")", 1)[1].split()


def process_cpu(pid: int) -> float:
    """CPU-s of a process so far, with its children that it has reaped (PostgreSQL's backends that ended)."""
    try:
        fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU-s of each living thread of a process so far."""
    threads = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                fields = _stat_fields(task / "stat")
                threads[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return threads


def machine_cpu() -> tuple[float, float]:
    """CPU-s the whole machine has been busy so far (all cores, /proc/stat), and CPU-s stolen from it by the
    hypervisor (time its cores wanted to run and did not)."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


@dataclass
class CpuSnapshot:
    processes: dict[int, float]
    threads: dict[int, dict[int, float]]
    at: float
    machine: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def take(cls, pids: Iterable[int], threads_of: Iterable[int] = ()) -> CpuSnapshot:
        return cls({pid: process_cpu(pid) for pid in pids}, {pid: thread_cpu(pid) for pid in threads_of},
                   time.monotonic(), machine_cpu())


def wait_quiet(pids: Iterable[int], *, limit: float = QUIET_CPU_PER_S, seconds: int = QUIET_SECONDS,
               timeout: float = QUIET_TIMEOUT) -> float:
    """Waits until the processes together burn less than `limit` CPU-s per second for `seconds` seconds in a
    row (or `timeout` passes); returns their CPU-s per second over the last second."""
    pids = list(pids)
    deadline, calm, rate = time.monotonic() + timeout, 0, 0.0
    before = sum(process_cpu(pid) for pid in pids)
    while time.monotonic() < deadline and calm < seconds:
        time.sleep(1)
        now = sum(process_cpu(pid) for pid in pids)
        rate, before = now - before, now
        calm = calm + 1 if rate < limit else 0
    return rate


# --- py-spy --------------------------------------------------------------------------------------

def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy not found: `make bench` installs it (the `bench` extra of pyproject.toml)")
    return found


@contextlib.contextmanager
def recording(pids: Iterable[int], directory: Path, rate: int = PY_SPY_RATE) -> Iterator[dict[int, Path]]:
    """py-spy records each process (collapsed stacks with thread ids) until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    outputs, spies, command = {}, {}, py_spy()
    for pid in pids:
        outputs[pid] = directory / f"{pid}.raw"
        log = (directory / f"{pid}.py-spy.log").open("w")
        spies[pid] = subprocess.Popen([command, "record", "--pid", str(pid), "--format", "raw", "--threads",
                                       "--rate", str(rate), "--output", str(outputs[pid])],
                                      stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.5)  # py-spy attaches
        for pid, spy in spies.items():
            if spy.poll() is not None:
                raise SystemExit(f"py-spy could not record process {pid}: "
                                 f"{(directory / f'{pid}.py-spy.log').read_text()[-2000:]}")
        yield outputs
    finally:
        for spy in spies.values():
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for spy in spies.values():
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


THREAD = re.compile(r"^thread \((\d+)\)(?::[^;]*)?;?")
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Frame:
    function: str
    file: str

    @classmethod
    def parse(cls, text: str) -> Frame:
        match = FRAME.match(text)
        return cls(match["function"], match["file"]) if match else cls(text, "")


def read_raw(path: Path) -> dict[int, Counter[tuple[Frame, ...]]]:
    """py-spy's collapsed stacks (`--format raw --threads`): sample counts of each stack, by thread id."""
    stacks: dict[int, Counter[tuple[Frame, ...]]] = defaultdict(Counter)
    if not path.exists():
        return stacks
    for line in path.read_text().splitlines():
        text, _, count = line.rpartition(" ")
        thread = THREAD.match(text)
        tid = int(thread[1]) if thread else 0
        frames = text[thread.end():] if thread else text
        stacks[tid][spawned_from(tuple(Frame.parse(frame) for frame in frames.split(";") if frame))] += int(count)
    return stacks


# --- SQLAlchemy's greenlets, labelled -----------------------------------------------------------------

GREENLET_HOOK = Path(__file__).with_name("greenlet_hook")  # its sitecustomize.py calls label_greenlets()
GREENLET_ENV = {"ORDER_SAGA_PROFILE_GREENLETS": "1"}
SPAWNED_FROM = "spawned_from|"
EVENT_LOOP_FILES = ("asyncio/", "anyio/", "threading.py", "<frozen", "contextlib.py", "concurrent/")


def greenlet_env(environ: dict[str, str]) -> dict[str, str]:
    """The environment that makes a stack's processes label their greenlets (`label_greenlets`)."""
    path = os.pathsep.join(filter(None, [str(GREENLET_HOOK), environ.get("PYTHONPATH", "")]))
    return {**GREENLET_ENV, "PYTHONPATH": path}


def label_greenlets() -> None:
    """SQLAlchemy's async API runs its sync ORM code in a greenlet, whose frames py-spy sees without the
    coroutines that started it: the route or service is lost. Here each greenlet starts through a function
    named after the frames it was spawned from (`spawned_from|file:function|...`), which `read_raw` puts back
    under the greenlet's own frames. A profiling aid: only in stacks that `benchmarks.profile` starts."""
    import functools
    import sys
    import types

    from sqlalchemy.util import concurrency

    shim = concurrency._concurrency_shim
    shim._initialize()
    base, trampolines = shim._AsyncIoGreenlet, {}
    roots = sorted((entry for entry in sys.path if entry), key=len, reverse=True)

    def short(filename: str) -> str:
        for root in roots:
            if filename.startswith(root.rstrip("/") + "/"):
                return filename[len(root.rstrip("/")) + 1:]
        return filename

    def trampoline(codes: tuple[types.CodeType, ...]):
        frames = [f"{short(code.co_filename)}:{code.co_qualname}" for code in reversed(codes)
                  if not short(code.co_filename).startswith(EVENT_LOOP_FILES)]
        label = re.sub(r"[^\w.<>/:|-]", "_", SPAWNED_FROM + "|".join(frames[-24:]))

        def spawned(fn, *args, **kwargs):
            return fn(*args, **kwargs)

        return types.FunctionType(spawned.__code__.replace(co_name=label, co_qualname=label), {})

    class LabelledGreenlet(base):
        def __init__(self, fn, driver):
            frame, codes = sys._getframe(2), []
            while frame is not None:
                codes.append(frame.f_code)
                frame = frame.f_back
            key = tuple(codes)
            if key not in trampolines:
                trampolines[key] = trampoline(key)
            super().__init__(functools.partial(trampolines[key], fn), driver)

    shim._AsyncIoGreenlet = LabelledGreenlet


def spawned_from(frames: tuple[Frame, ...]) -> tuple[Frame, ...]:
    """A greenlet's stack with the frames it was spawned from put back above it (`label_greenlets`)."""
    if not frames or not frames[0].function.startswith(SPAWNED_FROM):
        return frames
    outer = []
    for item in frames[0].function.removeprefix(SPAWNED_FROM).split("|"):
        file, _, function = item.rpartition(":")
        outer.append(Frame(function, file))
    return (*outer, *frames[1:])


# --- what the servers counted ---------------------------------------------------------------------------

def server_counters(env: dict[str, str]) -> dict[str, float]:
    """Counts that do not depend on the machine's load: Redis commands, PostgreSQL transactions and rows (the
    scaled profile's servers, on the ports of `env`); empty for what the stack does not run."""
    counters: dict[str, float] = {}
    if port := env.get("OrderProcessing__RedisPort"):
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis(host="127.0.0.1", port=int(port))
            stats = client.info("commandstats")
            client.close()
            counters["redis commands"] = sum(value["calls"] for value in stats.values())
            for command in ("xadd", "xreadgroup", "xack", "evalsha", "publish"):
                counters[f"redis {command.upper()}"] = stats.get(f"cmdstat_{command}", {}).get("calls", 0)
    if port := env.get("OrderProcessing__PostgresPort"):
        with contextlib.suppress(Exception):
            import asyncio

            import asyncpg

            async def read() -> dict[str, float]:
                connection = await asyncpg.connect(host="127.0.0.1", port=int(port), user="postgres",
                                                   database="prefect")
                try:
                    row = await connection.fetchrow(
                        "SELECT sessions, xact_commit, tup_inserted, tup_updated, tup_deleted, tup_returned, tup_fetched "
                        "FROM pg_stat_database WHERE datname = 'prefect'")
                    return {f"postgresql {name.replace('_', ' ')}": float(value) for name, value in row.items()}
                finally:
                    await connection.close()

            counters.update(asyncio.run(read()))
    return counters


def event_counts(prefect_api: str, since: datetime, until: datetime) -> dict[str, int]:
    """The events Prefect's server stored between two instants, by event name."""
    import httpx

    body = {"filter": {"occurred": {"since": since.isoformat(), "until": until.isoformat()}}}
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        response = httpx.post(f"{prefect_api}/events/count-by/event", json=body, timeout=30)
        response.raise_for_status()
        return {entry["value"]: entry["count"] for entry in response.json()}
    return {}


# --- a burst, measured and profiled ---------------------------------------------------------------

PROFILED_KINDS = ("prefect server", "prefect api", "prefect services", "executor")


@dataclass
class Profile:
    """CPU-s of each process kind over a burst, and how the profiled processes spent theirs."""

    orders: int
    terminal: int
    sagas_per_s: float
    seconds_to_quiet: float
    cpu: dict[str, float]  # CPU-s by process kind, burst start until quiet
    idle_cpu_per_s: dict[str, float]
    weights: dict[str, Counter[tuple[Frame, ...]]] = field(default_factory=dict)  # CPU-s of each stack, by kind
    profiler_cpu: float = 0.0  # py-spy's own CPU-s (not in `cpu`)
    processes: dict[str, int] = field(default_factory=dict)  # how many of each kind
    api_calls: dict[str, float] = field(default_factory=dict)  # the executors' Prefect API calls per saga
    counters: dict[str, float] = field(default_factory=dict)  # `server_counters` per saga
    events: dict[str, float] = field(default_factory=dict)  # events stored per saga, by name
    foreign_cpu_per_s: float = 0.0  # CPU-s/s of everything else on the machine meanwhile (py-spy included)
    stolen_cpu_per_s: float = 0.0  # CPU-s/s the hypervisor did not give the machine meanwhile

    def per_saga(self, kind: str) -> float:
        return self.cpu.get(kind, 0.0) / max(self.terminal, 1)

    def save(self, path: Path) -> None:
        """As JSON, for `--tables-from`."""
        data = {**self.__dict__, "weights": {kind: [[[[f.function, f.file] for f in frames], seconds]
                                                    for frames, seconds in stacks.items()]
                                             for kind, stacks in self.weights.items()}}
        path.write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path) -> Profile:
        data = json.loads(path.read_text())
        data["weights"] = {kind: Counter({tuple(Frame(*f) for f in frames): seconds for frames, seconds in stacks})
                           for kind, stacks in data["weights"].items()}
        return cls(**data)


def by_kind(values: dict[int, float], kinds: dict[int, str]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for pid, value in values.items():
        totals[kinds[pid]] += value
    return dict(totals)


def profile_burst(stack, orders: int, directory: Path | None = None) -> Profile:
    """Profiles a burst of `orders`, posted back to back as the bench's burst, against a running
    `benchmarks.run.Stack` (py-spy output kept in `directory`; None: CPU from /proc only, no py-spy)."""
    from benchmarks.run import post_orders, prefect_api_calls, saga_numbers, wait_terminal

    kinds = stack_processes(stack.process.pid)
    pids = list(kinds)
    profiled = [pid for pid, kind in kinds.items() if kind in PROFILED_KINDS] if directory else []
    idle_before = CpuSnapshot.take(pids)
    time.sleep(5)
    idle_after = CpuSnapshot.take(pids)
    idle = {pid: (idle_after.processes[pid] - idle_before.processes[pid]) / (idle_after.at - idle_before.at)
            for pid in pids}
    calls_before = prefect_api_calls(stack.gateway)
    counters_before = server_counters(stack.env)
    started = datetime.now(UTC)
    with recording(profiled, directory) if directory else contextlib.nullcontext({}) as outputs:
        before = CpuSnapshot.take(pids, profiled)
        accepted = post_orders(stack.gateway, orders, None)
        documents = wait_terminal(stack.data_dir / "orders.db", [order_id for order_id, _ in accepted], 600)
        wait_quiet(pids, limit=sum(idle.values()) + QUIET_CPU_PER_S)
        after = CpuSnapshot.take(pids, profiled)
        profiler_cpu = sum(process_cpu(spy) for spy in children(os.getpid())
                           if "py-spy" in Path(f"/proc/{spy}/cmdline").read_bytes().decode(errors="replace"))
    counters = server_counters(stack.env)
    events = event_counts(stack.prefect_api, started, datetime.now(UTC))
    cpu = {pid: after.processes[pid] - before.processes[pid] for pid in pids}
    stack_cpu = sum(cpu.values())
    foreign = (after.machine[0] - before.machine[0] - stack_cpu) / (after.at - before.at)
    stolen = (after.machine[1] - before.machine[1]) / (after.at - before.at)
    numbers = saga_numbers(accepted, documents)
    calls = {route: (total - calls_before.get(route, 0.0)) / max(numbers["terminal"], 1)
             for route, total in prefect_api_calls(stack.gateway).items() if total > calls_before.get(route, 0.0)}
    weights: dict[str, Counter[tuple[Frame, ...]]] = defaultdict(Counter)
    for pid in profiled:
        for stack_frames, seconds in thread_weights(read_raw(outputs[pid]), before.threads[pid],
                                                    after.threads[pid], cpu[pid]).items():
            weights[kinds[pid]][stack_frames] += seconds
    return Profile(orders=orders, terminal=numbers["terminal"], sagas_per_s=numbers["sagas_per_s"],
                   seconds_to_quiet=round(after.at - before.at, 1), cpu=by_kind(cpu, kinds),
                   idle_cpu_per_s=by_kind(idle, kinds), weights=dict(weights), profiler_cpu=profiler_cpu,
                   processes=dict(Counter(kinds.values())), api_calls=calls, foreign_cpu_per_s=foreign,
                   stolen_cpu_per_s=stolen,
                   counters={name: round((value - counters_before.get(name, 0.0)) / max(numbers["terminal"], 1), 2)
                             for name, value in counters.items()},
                   events={name: round(count / max(numbers["terminal"], 1), 2) for name, count in events.items()})


IDLE_LEAVES = {  # innermost frames of a thread that waits (the wait itself is in C, below the frame)
    ("EpollSelector.select", "selectors.py"), ("Condition.wait", "threading.py"), ("Event.wait", "threading.py"),
    ("_worker", "concurrent/futures/thread.py"), ("Queue.get", "queue.py"), ("Thread.join", "threading.py"),
    ("Thread._wait_for_tstate_lock", "threading.py"),
}


NO_PYTHON = Frame("<threads without Python frames>", "")


def is_idle(frames: tuple[Frame, ...]) -> bool:
    return not frames or (frames[-1].function, frames[-1].file) in IDLE_LEAVES


def thread_weights(stacks: dict[int, Counter[tuple[Frame, ...]]], before: dict[int, float],
                   after: dict[int, float], process_seconds: float) -> Counter[tuple[Frame, ...]]:
    """CPU-s of each stack: each thread's CPU over the burst (/proc) shared among its samples, waits left out
    where the thread has other samples; the CPU of threads gone by the end goes to their samples, or to all."""
    weights: Counter[tuple[Frame, ...]] = Counter()
    accounted = 0.0
    gone: dict[int, Counter[tuple[Frame, ...]]] = {}
    for tid, samples in stacks.items():
        if tid not in after:
            gone[tid] = samples
            continue
        seconds = after[tid] - before.get(tid, 0.0)
        accounted += seconds
        _share(weights, samples, seconds)
    for tid in after.keys() - stacks.keys():  # threads py-spy saw no Python frame of (C threads)
        seconds = after[tid] - before.get(tid, 0.0)
        accounted += seconds
        weights[(NO_PYTHON,)] += seconds
    rest = max(process_seconds - accounted, 0.0)
    if rest:
        _share(weights, sum((gone or stacks).values(), Counter()), rest)
    return weights


def _share(weights: Counter, samples: Counter, seconds: float) -> None:
    busy = Counter({frames: count for frames, count in samples.items() if not is_idle(frames)}) or samples
    total = sum(busy.values())
    for frames, count in busy.items():
        weights[frames] += seconds * count / total if total else 0.0


# --- what the CPU was spent on ----------------------------------------------------------------------

API_KINDS = ("prefect server", "prefect api")  # the processes that serve Prefect's API


def api_routes() -> dict[tuple[str, str], str]:
    """`METHOD /path` (WS for a websocket) of each endpoint function of Prefect's API, by (file, function) as
    py-spy names them."""
    import importlib
    import pkgutil

    import prefect.server.api

    routes = {}
    for module in pkgutil.iter_modules(prefect.server.api.__path__):
        try:
            router = getattr(importlib.import_module(f"prefect.server.api.{module.name}"), "router", None)
        except Exception:  # noqa: BLE001 - a module that needs what this process lacks serves no route here
            continue
        for route in getattr(router, "routes", []):
            endpoint = getattr(route, "endpoint", None)
            if endpoint is not None:
                method = "/".join(sorted(route.methods)) if getattr(route, "methods", None) else "WS"
                routes.setdefault((f"prefect/server/api/{module.name}.py", endpoint.__name__),
                                  f"{method} {route.path}")
    return routes


SERVICES = [  # (file prefix, name) of Prefect's background services, in the API process or on their own
    ("prefect/server/services/task_run_recorder.py", "service: task-run recorder"),
    ("prefect/server/events/services/event_persister.py", "service: event persister"),
    ("prefect/server/events/triggers.py", "service: triggers (automations)"),
    ("prefect/server/events/services/triggers.py", "service: triggers (automations)"),
    ("prefect/server/events/actions.py", "service: actions (automations)"),
    ("prefect/server/events/services/actions.py", "service: actions (automations)"),
    ("prefect/server/events/services/event_logger.py", "service: event logger"),
    ("prefect/server/events/stream.py", "service: event stream distributor (events/out, UI)"),
    ("prefect/server/logs/stream.py", "service: log stream distributor (logs/out)"),
    ("prefect/server/services/", "service: {}"),  # foreman, late runs, scheduler, ... by file name
    ("prefect/server/utilities/messaging/", "messaging: consume loop (in-memory)"),
    ("prefect_redis/messaging.py", "messaging: consume loop (Redis)"),
    ("docket/", "docket (perpetual services' runner)"),
]
HTTP_FILES = ("uvicorn/protocols/", "starlette/", "fastapi/", "h11/", "httptools", "websockets/")
EXECUTOR_PARTS = [  # innermost match wins
    ("prefect/logging/", "logs to the API (APILogHandler)"),
    ("prefect/events/", "events to the API (websocket client)"),
    ("prefect/client/", "Prefect API client"),
    ("httpx/", "Prefect API client"),
    ("httpcore/", "Prefect API client"),
    ("prefect/task_engine.py", "task engine"),
    ("prefect/flow_engine.py", "flow engine"),
    ("prefect/results.py", "results"),
    ("prefect/_internal/concurrency/", "Prefect's helper threads"),
    ("prefect/settings/", "Prefect settings look-ups"),
    ("prefect/", "Prefect (other)"),
    ("flows/", "saga code (flows, fulfillment)"),
    ("fulfillment/", "saga code (flows, fulfillment)"),
    ("deployments/", "executor and dispatcher (deployments/)"),
    ("logging/", "logging (console)"),
]
LAYERS = [  # (file prefix, layer): the innermost frame that is not `NEUTRAL` decides
    ("aiosqlite/", "SQLite (aiosqlite, its threads)"), ("sqlite3/", "SQLite (aiosqlite, its threads)"),
    ("asyncpg/", "asyncpg"), ("sqlalchemy/", "SQLAlchemy"), ("<sqlalchemy", "SQLAlchemy"),
    ("greenlet", "SQLAlchemy"),
    ("pydantic", "pydantic"), ("json/", "JSON"), ("orjson", "JSON"),
    ("websockets/", "websockets"), ("uvicorn/protocols/websockets", "websockets"),
    ("redis/", "Redis client"), ("prefect_redis/", "Redis client"),
    ("uvicorn/", "HTTP server (uvicorn, h11)"), ("h11/", "HTTP server (uvicorn, h11)"),
    ("httptools", "HTTP server (uvicorn, h11)"),
    ("starlette/", "Starlette, FastAPI"), ("fastapi/", "Starlette, FastAPI"),
    ("httpx/", "HTTP client (httpx)"), ("httpcore/", "HTTP client (httpx)"), ("ssl.py", "HTTP client (httpx)"),
    ("prefect/server/orchestration/", "orchestration rules"),
    ("prefect/server/utilities/messaging/", "messaging (in-memory)"),
    ("prefect/server/events/", "Prefect server: events"),
    ("prefect/server/", "Prefect server: API, models, schemas"),
    ("pendulum/", "dates (pendulum, whenever, dateutil)"), ("whenever/", "dates (pendulum, whenever, dateutil)"),
    ("dateutil/", "dates (pendulum, whenever, dateutil)"), ("prefect/types/_datetime",
                                                           "dates (pendulum, whenever, dateutil)"),
    ("docket/", "docket"), ("cloudpickle/", "Prefect client, engine"),
    ("prefect/", "Prefect client, engine"),
    ("logging/", "logging"),
    ("fulfillment/", "order-saga code"), ("flows/", "order-saga code"), ("deployments/", "order-saga code"),
    ("benchmarks/", "this profiler's greenlet labels"),
    ("asyncio/", "event loop (asyncio, anyio)"), ("anyio/", "event loop (asyncio, anyio)"),
    ("selectors.py", "event loop (asyncio, anyio)"), ("concurrent/", "event loop (asyncio, anyio)"),
    ("threading.py", "event loop (asyncio, anyio)"), ("queue.py", "event loop (asyncio, anyio)"),
]
NEUTRAL = ("typing.py", "weakref.py", "functools.py", "copy.py", "enum.py", "abc.py", "uuid.py", "contextlib.py",
           "<frozen", "inspect.py", "re/", "collections/", "dataclasses.py", "_weakrefset.py", "operator.py",
           "datetime.py", "zoneinfo/", "textwrap.py", "string.py", "<string>", "types.py", "ipaddress.py")
COLUMNS = {  # the layers, grouped into the columns of the component tables
    "database": ("SQLAlchemy", "SQLite (aiosqlite, its threads)", "asyncpg"),
    "pydantic": ("pydantic",),
    "JSON": ("JSON",),
    "HTTP, WS": ("HTTP server (uvicorn, h11)", "Starlette, FastAPI", "websockets", "HTTP client (httpx)"),
    "orchestration": ("orchestration rules",),
    "messaging": ("messaging (in-memory)", "Redis client", "docket"),
    "Prefect, dates": ("Prefect server: events", "Prefect server: API, models, schemas", "Prefect client, engine",
                       "dates (pendulum, whenever, dateutil)"),
}


def layer(frames: tuple[Frame, ...]) -> str:
    """The library the innermost frame that is not plumbing (typing, functools, ...) belongs to."""
    if frames == (NO_PYTHON,):
        return "threads without Python frames"
    for frame in reversed(frames):
        if frame.file.startswith(NEUTRAL):
            continue
        for prefix, name in LAYERS:
            if frame.file.startswith(prefix):
                return name
        return "other"
    return "other"


def component(frames: tuple[Frame, ...], kind: str, routes: dict[tuple[str, str], str]) -> str:
    """What the sample was doing for: the API route, the service, or (executor) the innermost part."""
    if frames == (NO_PYTHON,):
        return "threads without Python frames"
    if kind == "executor":
        for frame in reversed(frames):
            for prefix, name in EXECUTOR_PARTS:
                if frame.file.startswith(prefix):
                    return name
        return "event loop, other"
    for frame in frames:  # the outermost route handler
        if (frame.file, frame.function) in routes:
            return f"API `{routes[frame.file, frame.function]}`"
    for prefix, name in SERVICES:  # the first service in SERVICES that the stack is in
        for frame in frames:
            if frame.file.startswith(prefix):
                return name.format(Path(frame.file).stem.replace("_", " "))
    if any(frame.function == "_connection_worker_thread" for frame in frames):
        return "SQLite (aiosqlite's threads: statements in C, connections)"
    if any(frame.file.startswith(HTTP_FILES) for frame in frames):
        return "API: HTTP, ASGI outside route handlers"
    if any(frame.file.startswith("sqlalchemy/") for frame in frames):
        return "SQLAlchemy (caller unknown)"
    return "event loop (scheduling, callbacks), other"


def breakdown(weights: Counter[tuple[Frame, ...]], kind: str,
              routes: dict[tuple[str, str], str]) -> dict[str, Counter[str]]:
    """CPU-s by component, and within each by layer."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for frames, seconds in weights.items():
        table[component(frames, kind, routes)][layer(frames)] += seconds
    return dict(table)


# --- tables ------------------------------------------------------------------------------------------

def summary(profile: Profile) -> dict:
    per_saga = {kind: round(profile.per_saga(kind), 4) for kind in sorted(profile.cpu, key=lambda k: -profile.cpu[k])}
    return {"orders": profile.orders, "terminal": profile.terminal, "sagas_per_s": profile.sagas_per_s,
            "seconds_to_quiet": profile.seconds_to_quiet, "cpu_s_per_saga": per_saga,
            "total_cpu_s_per_saga": round(sum(per_saga.values()), 4),
            "idle_cpu_per_s": {kind: round(value, 3) for kind, value in profile.idle_cpu_per_s.items()},
            "profiler_cpu_s_per_saga": round(profile.profiler_cpu / max(profile.terminal, 1), 4),
            "foreign_cpu_per_s": round(profile.foreign_cpu_per_s, 2),
            "stolen_cpu_per_s": round(profile.stolen_cpu_per_s, 2), "counters_per_saga": profile.counters,
            "processes": profile.processes}


def _ms(seconds: float, sagas: int) -> str:
    """CPU-ms per saga, as the tables show it."""
    value = seconds / max(sagas, 1) * 1000
    return f"{value:.1f}" if value >= 0.05 else "·"


def process_table(profile: Profile) -> str:
    cores = os.cpu_count() or 1
    rows = []
    for kind in sorted(profile.cpu, key=lambda k: -profile.cpu[k]):
        if profile.cpu[kind] / max(profile.terminal, 1) < 0.00005:
            continue
        rows.append(f"| {kind} | {profile.processes.get(kind, 0)} | {_ms(profile.cpu[kind], profile.terminal)} | "
                    f"{profile.idle_cpu_per_s.get(kind, 0.0) * 1000:.0f} |")
    total = sum(profile.cpu.values()) / max(profile.terminal, 1)
    load = (f"everything else on the machine, py-spy included, used {profile.foreign_cpu_per_s:.2f} CPU-s/s "
            f"meanwhile, and\nthe hypervisor took {profile.stolen_cpu_per_s:.2f}"
            if profile.foreign_cpu_per_s or profile.stolen_cpu_per_s else "the load of other work was not recorded")
    return f"""| process kind | processes | CPU-ms per saga | idle CPU-ms/s |
|---|---|---|---|
{chr(10).join(rows)}
| **all** | | **{total * 1000:.1f}** | |

{profile.terminal} of {profile.orders} orders terminal, {profile.sagas_per_s} sagas/s measured under the profiler
(py-spy's own CPU, not counted above: {profile.profiler_cpu / max(profile.terminal, 1) * 1000:.1f} ms per saga;
{load});
CPU counted from the burst's start until the stack was quiet ({profile.seconds_to_quiet} s). All of it on
{cores} cores: at most {cores / total:.1f} sagas/s."""


def component_table(profile: Profile, kind: str, routes: dict[tuple[str, str], str], top: int = 16) -> str:
    table = breakdown(profile.weights[kind], kind, routes)
    total = sum(sum(layers.values()) for layers in table.values())
    ordered = sorted(table.items(), key=lambda item: -sum(item[1].values()))
    rest: Counter[str] = Counter()
    for _, layers in ordered[top:]:
        rest.update(layers)
    shown = ordered[:top] + ([(f"{len(ordered) - top} more", rest)] if rest else [])
    header = " | ".join(COLUMNS)
    rows = []
    for name, layers in shown:
        seconds = sum(layers.values())
        grouped = [sum(layers[name] for name in group) for group in COLUMNS.values()]
        other = seconds - sum(grouped)
        cells = " | ".join(_ms(value, profile.terminal) for value in [*grouped, other])
        rows.append(f"| {name} | **{_ms(seconds, profile.terminal)}** | {seconds / total:.0%} | {cells} |")
    return f"""| {kind}: for what | CPU-ms per saga | share | {header} | other |
|---|---|---|{"---|" * (len(COLUMNS) + 1)}
""" + "\n".join(rows)


def layer_table(profile: Profile, kinds: list[str]) -> str:
    layers: dict[str, Counter[str]] = {}
    for kind in kinds:
        layers[kind] = Counter()
        for frames, seconds in profile.weights[kind].items():
            layers[kind][layer(frames)] += seconds
    names = sorted({name for counts in layers.values() for name in counts},
                   key=lambda name: -sum(counts[name] for counts in layers.values()))
    rows = [f"| {name} | " + " | ".join(_ms(layers[kind][name], profile.terminal) for kind in kinds) + " |"
            for name in names]
    return f"""| layer (innermost frame) | {" | ".join(kinds)} |
|---|{"---|" * len(kinds)}
""" + "\n".join(rows)


def route_table(profile: Profile, routes: dict[tuple[str, str], str], calls: dict[str, float] | None) -> str:
    """CPU of each API route over all API processes; with the executors' calls per saga when known."""
    seconds: Counter[str] = Counter()
    for kind in API_KINDS:
        for frames, value in profile.weights.get(kind, {}).items():
            name = component(frames, kind, routes)
            if name.startswith("API"):
                seconds[name] += value
    rows = []
    for name, value in seconds.most_common():
        per_saga = value / max(profile.terminal, 1)
        count = route_calls(name, calls) if calls else None
        per_call = f"{per_saga / count * 1000:.2f}" if count else ""
        rows.append(f"| {name} | {per_saga * 1000:.1f} | {round(count, 2) if count else ''} | {per_call} |")
    return """| API route (handler and what it calls) | CPU-ms per saga | calls per saga | CPU-ms per call |
|---|---|---|---|
""" + "\n".join(rows)


def route_calls(component_name: str, calls: dict[str, float]) -> float | None:
    """The executors' calls per saga of a route (`order_saga_prefect_api_calls_total`), e.g.
    "API `POST /flow_runs/{id:uuid}/set_state`" ← "POST flow_runs/:id/set_state"."""
    match = re.fullmatch(r"API `(\S+) /(.*)`", component_name)
    if not match:
        return None
    method, path = match.groups()
    pattern = re.sub(r"\\\{[^/]*?:uuid\\\}", ":id", re.escape(path.rstrip("/")))
    pattern = re.sub(r"\\\{[^/]*?\\\}", "[^/]+", pattern)
    total = sum(value for route, value in calls.items()
                if re.fullmatch(f"{re.escape(method)} {pattern}/?", route))
    return total if method != "WS" else None


def events_table(profile: Profile) -> str:
    rows = [f"| `{name}` | {count} |" for name, count in sorted(profile.events.items(), key=lambda kv: -kv[1])]
    counters = "".join(f"\n| {name} | {value} |" for name, value in profile.counters.items())
    return f"""| stored per saga | count |
|---|---|
{chr(10).join(rows)}
| **events** | **{sum(profile.events.values()):.2f}** |{counters}"""


def markdown(profile: Profile, title: str = "", calls: dict[str, float] | None = None) -> str:
    """The tables of one burst, as markdown."""
    routes = api_routes()
    calls = profile.api_calls if calls is None else calls
    kinds = [kind for kind in (*API_KINDS, "prefect services", "executor") if kind in profile.weights]
    parts = [f"### {title}" if title else "", process_table(profile)]
    for kind in kinds:
        parts.append(component_table(profile, kind, routes))
    if kinds:
        parts.append(layer_table(profile, kinds))
    if any(kind in profile.weights for kind in API_KINDS):
        parts.append(route_table(profile, routes, calls))
    if profile.events:
        parts.append(events_table(profile))
    return "\n\n".join(part for part in parts if part) + "\n"


# --- standalone ------------------------------------------------------------------------------------

WARM_UP = 20


def start_stack(work: Path, *, scaled: bool, env: dict[str, str], api_workers: int | None = None,
                executors: int | None = None, label: bool = True):
    """The stack of `order-saga up` (scaled: `--profile scaled`, on ports of its own) in `work`; `label`: its
    processes label SQLAlchemy's greenlets (`label_greenlets`)."""
    from benchmarks.run import Stack, free_port

    options: list[str] = []
    if label:
        env = {**greenlet_env(dict(os.environ)), **env}
    if scaled:
        work.chmod(0o755)  # PostgreSQL runs as `postgres` when this runs as root: it must reach its cluster
        options += ["--profile", "scaled"]
        env = {"OrderProcessing__PostgresPort": str(free_port()), "OrderProcessing__RedisPort": str(free_port()),
               **env}
    if api_workers is not None:
        options += ["--api-workers", str(api_workers)]
    if executors is not None:
        options += ["--executors", str(executors)]
    return Stack(work, env, tuple(options))


def warm_up(stack, orders: int = WARM_UP) -> None:
    """A few sagas first: imports, caches, connection pools and the deployments' registration are not per saga."""
    from benchmarks.run import post_orders, wait_terminal

    accepted = post_orders(stack.gateway, orders, None)
    wait_terminal(stack.data_dir / "orders.db", [order_id for order_id, _ in accepted], 300)
    wait_quiet(stack_processes(stack.process.pid), limit=0.3)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    label, _, settings = text.partition(":")
    return label, dict(item.split("=", 1) for item in settings.split(",") if item)


def compare(variants: dict[str, dict[str, str]], *, rounds: int, orders: int, bursts: int, scaled: bool,
            api_workers: int | None = None, executors: int | None = None,
            base_env: dict[str, str] | None = None) -> dict[str, list[dict]]:
    """CPU per saga of each variant (its settings on top of `base_env`): a stack each, in turn, `rounds` times,
    so that what else runs on the machine weighs on all alike; `bursts` bursts of `orders` on each stack."""
    from benchmarks.run import say

    results: dict[str, list[dict]] = {label: [] for label in variants}
    for number in range(1, rounds + 1):
        for label, settings in variants.items():
            say(f"round {number}/{rounds}: {label} {settings}")
            with tempfile.TemporaryDirectory(prefix="order-saga-profile-") as tmp, \
                    start_stack(Path(tmp), scaled=scaled, env={**(base_env or {}), **settings},
                                api_workers=api_workers, executors=executors, label=False) as stack:
                warm_up(stack)
                for _ in range(bursts):
                    results[label].append(summary(profile_burst(stack, orders, None)))
                    say(f"  {results[label][-1]['cpu_s_per_saga']} total {results[label][-1]['total_cpu_s_per_saga']}"
                        f" sagas/s {results[label][-1]['sagas_per_s']}")
    return results


PREFECT_SIDE = ("prefect server", "prefect api", "prefect services", "postgresql", "redis")


def server_side(run: dict) -> float:
    """CPU-s per saga of Prefect's side: its API, its services and their PostgreSQL and Redis."""
    return sum(run["cpu_s_per_saga"].get(kind, 0.0) for kind in PREFECT_SIDE)


def comparison_table(results: dict[str, list[dict]]) -> str:
    """CPU-ms per saga of each variant: mean (lowest–highest) over its bursts. The load of other work on the
    machine moves every process's CPU per saga alike (by a quarter from one burst to the next on a busy day);
    the executor does the same work whatever the server's settings, so Prefect's side divided by the
    executor's is the steadier figure to compare variants by."""
    kinds = [kind for kind in ("prefect server", "prefect api", "prefect services", "executor", "postgresql",
                               "redis", "gateway") if any(kind in run["cpu_s_per_saga"] for runs in results.values()
                                                          for run in runs)]

    def cell(values: list[float]) -> str:
        values = [value * 1000 for value in values]
        return f"{sum(values) / len(values):.1f} ({min(values):.0f}–{max(values):.0f})" if values else ""

    rows = []
    for label, runs in results.items():
        cells = [cell([run["cpu_s_per_saga"].get(kind, 0.0) for run in runs]) for kind in kinds]
        total = cell([run["total_cpu_s_per_saga"] for run in runs])
        rate = sum(run["sagas_per_s"] for run in runs) / max(len(runs), 1)
        foreign = sum(run.get("foreign_cpu_per_s", 0.0) + run.get("stolen_cpu_per_s", 0.0)
                      for run in runs) / max(len(runs), 1)
        index = [server_side(run) / run["cpu_s_per_saga"]["executor"] for run in runs
                 if run["cpu_s_per_saga"].get("executor")]
        ratio = f"{sum(index) / len(index):.2f} ({min(index):.2f}–{max(index):.2f})" if index else ""
        rows.append(f"| {label} | {len(runs)} | {' | '.join(cells)} | **{total}** | {ratio} | {rate:.2f} | "
                    f"{foreign:.2f} |")
    table = f"""| variant | bursts | {' | '.join(kinds)} | all | Prefect side ÷ executor | sagas/s | other load + steal CPU-s/s |
|---|---|{'---|' * len(kinds)}---|---|---|---|
""" + "\n".join(rows)
    names = list(dict.fromkeys(name for runs in results.values() for run in runs
                               for name in run.get("counters_per_saga", {})))
    if names:
        rows = [f"| {label} | " + " | ".join(
            f"{sum(run.get('counters_per_saga', {}).get(name, 0.0) for run in runs) / max(len(runs), 1):.1f}"
            for name in names) + " |" for label, runs in results.items()]
        table += f"""

Per saga (mean over the bursts), counted by the servers themselves:

| variant | {' | '.join(names)} |
|---|{'---|' * len(names)}
""" + "\n".join(rows)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scaled", action="store_true", help="`order-saga up --profile scaled` (PostgreSQL, Redis)")
    parser.add_argument("--orders", type=int, default=150, help="orders in each burst (default 150)")
    parser.add_argument("--bursts", type=int, default=1, help="bursts in a row on the same stack (default 1)")
    parser.add_argument("--api-workers", type=int, help="Prefect API processes (scaled; default 2)")
    parser.add_argument("--executors", type=int, help="saga executors (default: 1, scaled: 2)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the stack (a Prefect setting to try); repeatable")
    parser.add_argument("--no-profile", action="store_true", help="CPU from /proc only, without py-spy")
    parser.add_argument("--keep", type=Path, help="keep py-spy's collapsed stacks in this directory")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--tables-from", type=Path, nargs="+", metavar="PROFILE_JSON",
                        help="print the tables of profiles saved by an earlier run (profile.json), start nothing")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:NAME=VALUE,...",
                        help="compare settings: a stack per variant (`baseline:` for none), each in turn, "
                             "--rounds times, CPU from /proc only; repeatable")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --variant stacks (default 2)")
    arguments = parser.parse_args(argv)
    if arguments.tables_from:
        for path in arguments.tables_from:
            print(markdown(Profile.load(path), title=str(path)), flush=True)
        return
    if arguments.variant:
        variants = dict(parse_variant(text) for text in arguments.variant)
        results = compare(variants, rounds=arguments.rounds, orders=arguments.orders, bursts=arguments.bursts,
                          scaled=arguments.scaled, api_workers=arguments.api_workers, executors=arguments.executors,
                          base_env=dict(item.split("=", 1) for item in arguments.env))
        if arguments.json:
            arguments.json.write_text(json.dumps(results, indent=1))
        print(comparison_table(results), flush=True)
        return
    env = dict(item.split("=", 1) for item in arguments.env)
    with tempfile.TemporaryDirectory(prefix="order-saga-profile-") as tmp:
        work = Path(tmp)
        with start_stack(work, scaled=arguments.scaled, env=env, api_workers=arguments.api_workers,
                         executors=arguments.executors, label=not arguments.no_profile) as stack:
            warm_up(stack)
            profiles = []
            for number in range(1, arguments.bursts + 1):
                directory = None if arguments.no_profile else (arguments.keep or work / "py-spy") / f"burst-{number}"
                profiles.append(profile_burst(stack, arguments.orders, directory))
                if directory:
                    profiles[-1].save(directory / "profile.json")
                print(markdown(profiles[-1], title=f"burst {number}"), flush=True)
        if arguments.json:
            arguments.json.write_text(json.dumps([summary(profile) for profile in profiles], indent=1))


if __name__ == "__main__":
    main()

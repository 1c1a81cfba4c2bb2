"""`make bench`: every leg in one run on this machine, written to BENCHMARKS.md (a benchmark, not a test).

Legs, all over the same embedded stores and services:
- limit: the saga logic as plain asyncio calls, no orchestrator;
- product: orders POSTed through the real stack, started as `make up` starts it, at a steady rate and as a
  burst; accept latency, accept → terminal latency, sagas/s, and that every order ended terminal with one
  flow run;
- default-Prefect: the same flow run the way Prefect does out of the box (`serve` + `run_deployment`);
- PostgreSQL: the product burst again with the Prefect server on PostgreSQL (when it is installed);
- scaled: the scaled profile (`order-saga up --profile scaled`) with 1 and 2 executors and 1 and 2 Prefect API
  processes, and the model of sagas/s on N cores that their CPU per saga gives;
- gateway: GET /api/orders/{id}, POST /api/orders and a GraphQL `order(id)` query from a load generator in
  another process, against a bare Starlette route on the same uvicorn settings (the limit), and GraphQL's
  `{ __typename }` (the floor of the GraphQL machinery itself);
- peak RSS of each process, and the CPU seconds each process spends per saga in the bursts.
The last line printed is the summary the issue asks for. `--only gateway` runs the gateway legs alone and
prints them, without writing BENCHMARKS.md (for measuring a change to the gateway); `--only scaled` the same
for the scaled profile's legs, and `--only sagas` for the legs of the SQLite default (limit, product burst,
default Prefect) and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from benchmarks.postgres import throwaway_postgres
from benchmarks.profile import children
from deployments.postgres import postgres_bin_dir
from fulfillment.domain import Actor
from fulfillment.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SEED = {"customerId": "cust-bench", "items": [
    {"productId": "prod-100", "productName": "Wireless Headphones", "quantity": 1, "unitPrice": 49.99},
    {"productId": "prod-200", "productName": "USB-C Cable", "quantity": 1, "unitPrice": 9.99}]}
BENCH = Actor.trusted("bench")
STEADY_RATE, STEADY_SECONDS = 2.0, 20
BURST = 150
POSTGRES_BURST = 200
DEFAULT_LEG_ORDERS = 20
LIMIT_LEG_ORDERS = 300
GATEWAY_SECONDS, GATEWAY_CONNECTIONS = 8, 16
API_CALLS_BEFORE = {"POST flow_runs/:id/set_state": 2.0, "POST deployments/:id/create_flow_run": 1.0,
                    "PATCH flow_runs/:id": 1.0, "GET flow_runs/:id": 1.0}
API_CALLS_BEFORE_MEASURED = "2026-11-30"
GRAPHQL_TARGET = 0.30  # of the bare route's requests/s (the benchmarks issue)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100)[q - 1]


# --- the limit: plain asyncio ------------------------------------------------------------------

def limit_leg(work: Path) -> dict:
    from fulfillment.bootstrap import bootstrap

    async def run() -> float:
        container = bootstrap(Settings(data_dir=work / "limit", default_stock=10**9))
        orders = [await container.order_service.place(SEED, source="bench", actor=BENCH) for _ in range(LIMIT_LEG_ORDERS)]
        gate = asyncio.Semaphore(8)

        async def one(order_id: str) -> None:
            async with gate:
                await container.saga.run(order_id)

        started = time.perf_counter()
        await asyncio.gather(*(one(order.id) for order in orders))
        elapsed = time.perf_counter() - started
        await container.aclose()
        return elapsed

    elapsed = asyncio.run(run())
    return {"orders": LIMIT_LEG_ORDERS, "seconds": round(elapsed, 2), "sagas_per_s": round(LIMIT_LEG_ORDERS / elapsed, 1)}


# --- the product: the stack as `make up` starts it -----------------------------------------------

class Stack:
    def __init__(self, work: Path, extra_env: dict[str, str], up_options: tuple[str, ...] = ()):
        self.data_dir = work / "stack"
        self.prefect_port, self.gateway_port = free_port(), free_port()
        self.gateway = f"http://127.0.0.1:{self.gateway_port}"
        self.prefect_api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.env = {**os.environ, "OrderProcessing__DataDir": str(self.data_dir),
                    "OrderProcessing__GatewayPort": str(self.gateway_port), "PREFECT_API_URL": self.prefect_api,
                    "PREFECT_UI_URL": f"http://127.0.0.1:{self.prefect_port}",
                    "OrderProcessing__DefaultStock": str(10**9),
                    "OrderProcessing__EmbeddedServicesPort": "0",  # unused here: the same processes as earlier runs
                    **extra_env}
        self.up_options = up_options
        self.log = work / "stack.log"

    def __enter__(self) -> Stack:
        with self.log.open("w") as output:
            self.process = subprocess.Popen([str(Path(PYTHON).with_name("order-saga")), "up", *self.up_options],
                                            cwd=ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + 180
        while "order-saga is up" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the stack did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)
        return self

    def processes(self) -> dict[int, str]:
        """Every process of the stack (the supervisor's children and theirs: uvicorn's worker processes,
        PostgreSQL's backends), by the role of the child it descends from."""
        roles = {}
        for child in children(self.process.pid):
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            role = next((name for marker, name in ROLES if marker in command), command)
            roles.update(dict.fromkeys([child, *descendants(child)], role))
        return roles

    def __exit__(self, *exc) -> None:
        os.kill(self.process.pid, signal.SIGTERM)
        self.process.wait(60)


ROLES = [("prefect_server", "prefect server"), ("server services start", "prefect services"),
         ("deployments.worker", "worker"), ("-m gateway", "gateway"), ("postgres", "postgresql"),
         ("redis-server", "redis")]


def descendants(pid: int) -> list[int]:
    return [grandchild for child in children(pid) for grandchild in (child, *descendants(child))]


def cpu_by_process(stack: Stack) -> dict[int, tuple[str, float]]:
    found = {}
    for pid, role in stack.processes().items():
        try:
            found[pid] = (role, cpu_seconds(pid))
        except FileNotFoundError:
            continue
    return found


def cpu_per_saga(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                 sagas: int) -> dict[str, float]:
    """CPU seconds per saga of each role, summed over its processes (a process started meanwhile counts whole)."""
    spent: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        spent[role] = spent.get(role, 0.0) + cpu - before.get(pid, (role, 0.0))[1]
    return {role: round(seconds / sagas, 4) for role, seconds in spent.items()}


API_CALLS = re.compile(r'^order_saga_prefect_api_calls_total\{method="([^"]+)"\} ([0-9.e+]+)$', re.MULTILINE)


def prefect_api_calls(gateway: str) -> dict[str, float]:
    """The executors' Prefect API calls so far, by method and route (from the stack's `/metrics`)."""
    return {route: float(value) for route, value in API_CALLS.findall(httpx.get(f"{gateway}/metrics").text)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def post_orders(gateway: str, count: int, rate: float | None) -> list[tuple[str, float]]:
    """(order id, accept latency s) for each order, POSTed at `rate` per second, or back to back."""
    accepted = []
    with httpx.Client(base_url=gateway, timeout=30) as client:
        started = time.perf_counter()
        for n in range(count):
            if rate:
                time.sleep(max(0.0, started + n / rate - time.perf_counter()))
            sent = time.perf_counter()
            response = client.post("/api/orders", json=SEED)
            response.raise_for_status()
            accepted.append((response.json()["id"], time.perf_counter() - sent))
    return accepted


def wait_terminal(database: Path, order_ids: list[str], timeout: float) -> dict[str, dict]:
    """The stored documents of the orders once all are terminal (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    wanted = set(order_ids)
    while True:
        with sqlite3.connect(database, timeout=10) as db:
            rows = db.execute(f"SELECT id, document FROM orders WHERE id IN ({','.join('?' * len(wanted))})",
                              list(wanted)).fetchall()
        documents = {order_id: json.loads(document) for order_id, document in rows}
        done = {i: d for i, d in documents.items() if d["status"] in ("completed", "failed", "cancelled")}
        if len(done) == len(wanted) or time.monotonic() > deadline:
            return done
        time.sleep(0.25)


def saga_numbers(accepted: list[tuple[str, float]], documents: dict[str, dict]) -> dict:
    ids = [order_id for order_id, _ in accepted]
    finished = [documents[i] for i in ids if i in documents]
    if not finished:
        raise SystemExit(f"none of {len(ids)} orders finished: the stack is not running sagas")
    e2e = [(datetime.fromisoformat(d["completedAt"]) - datetime.fromisoformat(d["createdAt"])).total_seconds()
           for d in finished]
    first = min(datetime.fromisoformat(d["createdAt"]) for d in finished)
    last = max(datetime.fromisoformat(d["completedAt"]) for d in finished)
    return {
        "orders": len(ids), "terminal": len(finished), "completed": sum(d["status"] == "completed" for d in finished),
        "accept_p50_ms": round(percentile([a for _, a in accepted], 50) * 1000, 1),
        "accept_p99_ms": round(percentile([a for _, a in accepted], 99) * 1000, 1),
        "e2e_p50_ms": round(percentile(e2e, 50) * 1000), "e2e_p99_ms": round(percentile(e2e, 99) * 1000),
        "sagas_per_s": round(len(finished) / max((last - first).total_seconds(), 1e-9), 2),
    }


def flow_runs_per_order(prefect_api: str, order_ids: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(order_ids, 0)
    names = [f"order-{i}" for i in order_ids]
    with httpx.Client(timeout=30) as client:
        for start in range(0, len(names), 200):
            offset = 0
            while True:
                page = client.post(f"{prefect_api}/flow_runs/filter", json={
                    "flow_runs": {"name": {"any_": names[start:start + 200]}}, "limit": 200, "offset": offset}).json()
                for run in page:
                    counts[run["name"].removeprefix("order-")] += 1
                if len(page) < 200:
                    break
                offset += 200
    return counts


def burst_leg(stack: Stack, count: int, database: Path | None) -> tuple[list, dict]:
    """A burst of orders; its numbers include the CPU seconds each process of the stack spent per saga, and the
    Prefect API calls the executor made per saga."""
    before = cpu_by_process(stack)
    calls_before = prefect_api_calls(stack.gateway)
    burst = post_orders(stack.gateway, count, None)
    numbers = saga_numbers(burst, wait_terminal(database or stack.data_dir / "orders.db", [i for i, _ in burst], 240))
    numbers["cpu_s_per_saga"] = cpu_per_saga(before, cpu_by_process(stack), count)
    time.sleep(3)  # the last runs' final calls
    calls = prefect_api_calls(stack.gateway)
    numbers["api_calls_per_saga"] = {route: round((total - calls_before.get(route, 0)) / count, 2)
                                     for route, total in sorted(calls.items(), key=lambda kv: -kv[1])
                                     if total > calls_before.get(route, 0)}
    say(f"  {numbers}")
    return burst, numbers


def product_leg(stack: Stack) -> dict:
    database = stack.data_dir / "orders.db"
    say(f"product leg: steady {STEADY_RATE:g} orders/s for {STEADY_SECONDS}s")
    steady = post_orders(stack.gateway, int(STEADY_RATE * STEADY_SECONDS), STEADY_RATE)
    steady_numbers = saga_numbers(steady, wait_terminal(database, [i for i, _ in steady], 120))
    say(f"  {steady_numbers}")
    say(f"product leg: burst of {BURST} orders")
    burst, burst_numbers = burst_leg(stack, BURST, database)
    ids = [i for i, _ in steady + burst]
    runs = flow_runs_per_order(stack.prefect_api, ids)
    unfinished = set(ids) - set(wait_terminal(database, ids, 0))
    lost = len(unfinished | {i for i in ids if runs[i] != 1})
    return {"steady": steady_numbers, "burst": burst_numbers, "lost": lost,
            "doubled": sum(1 for n in runs.values() if n > 1)}


# --- default Prefect: serve + run_deployment ----------------------------------------------------

DEFAULT_SERVE = """
import sys
from flows.order_saga import order_saga
order_saga.serve(name="order-saga-default")
"""


def default_prefect_leg(stack: Stack, work: Path) -> dict:
    env = {**stack.env, "OrderProcessing__DataDir": str(work / "default"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    server = subprocess.Popen([PYTHON, "-c", DEFAULT_SERVE], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    saved = dict(os.environ)
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith(("PREFECT_", "OrderProcessing__"))})
        return asyncio.run(_default_leg(work / "default"))
    finally:
        os.environ.clear()
        os.environ.update(saved)  # the later legs start from the same environment as the earlier ones
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)


async def _default_leg(data_dir: Path) -> dict:
    from prefect.deployments import run_deployment

    from fulfillment.bootstrap import bootstrap

    container = bootstrap(Settings(data_dir=data_dir))
    deadline = time.monotonic() + 60
    while True:  # until `serve` has registered the deployment
        try:
            await run_deployment("order-saga/order-saga-default", parameters={"order_id": "warm-up"}, timeout=0)
            break
        except Exception:  # noqa: BLE001 - not registered yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    accepted = []
    for _ in range(DEFAULT_LEG_ORDERS):
        sent = time.perf_counter()
        order = await container.order_service.place(SEED, source="bench", actor=BENCH)
        await run_deployment("order-saga/order-saga-default", parameters={"order_id": order.id}, timeout=0)
        accepted.append((order.id, time.perf_counter() - sent))
    await container.aclose()
    documents = wait_terminal(data_dir / "orders.db", [i for i, _ in accepted], 240)
    return saga_numbers(accepted, documents)


# --- gateway legs -------------------------------------------------------------------------------

PURE_BARE = "bare route on h11 + asyncio"
GRAPHQL_ORDER = '{"query": "query($id: ID!) { order(id: $id) { id status totalAmount items { productId quantity } } }", "variables": {"id": "%s"}}'


def gateway_legs(work: Path) -> dict:
    """Against a gateway of its own (no worker, so POSTed orders only queue), and the bare route."""
    port, bare_port, pure_port = free_port(), free_port(), free_port()
    env = {**os.environ, "OrderProcessing__DataDir": str(work / "gateway"), "OrderProcessing__GatewayPort": str(port),
           "LOG_LEVEL": "WARNING"}
    gateway = subprocess.Popen([PYTHON, "-m", "gateway"], cwd=ROOT, env=env)
    bare = subprocess.Popen([PYTHON, "-m", "benchmarks.bare_app", str(bare_port)], cwd=ROOT)
    pure = subprocess.Popen([PYTHON, "-m", "benchmarks.bare_app", str(pure_port), "pure"], cwd=ROOT)
    try:
        for url in (f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{bare_port}/api/orders/x",
                    f"http://127.0.0.1:{pure_port}/api/orders/x"):
            _wait_http(url)
        order_id = httpx.post(f"http://127.0.0.1:{port}/api/orders", json=SEED).json()["id"]
        body = work / "order.json"
        body.write_text(json.dumps(SEED))
        query = work / "query.json"
        query.write_text(GRAPHQL_ORDER % order_id)
        typename = work / "typename.json"
        typename.write_text('{"query": "{ __typename }"}')
        legs = {
            "bare route": _load(f"http://127.0.0.1:{bare_port}/api/orders/{order_id}"),
            "REST GET /api/orders/{id}": _load(f"http://127.0.0.1:{port}/api/orders/{order_id}"),
            "GraphQL order(id)": _load(f"http://127.0.0.1:{port}/graphql", "POST", query),
            "REST POST /api/orders": _load(f"http://127.0.0.1:{port}/api/orders", "POST", body),
            "GraphQL { __typename } (floor)": _load(f"http://127.0.0.1:{port}/graphql", "POST", typename),
            PURE_BARE: _load(f"http://127.0.0.1:{pure_port}/api/orders/{order_id}"),
        }
        legs["rss_mb"] = {"gateway": peak_rss_mb(gateway.pid), "bare route": peak_rss_mb(bare.pid)}
        legs["graphql_execution_us"] = graphql_execution_us(work)
        return legs
    finally:
        for process in (gateway, bare, pure):
            process.terminate()
            process.wait(30)


def graphql_execution_us(work: Path) -> dict[str, float]:
    """Microseconds per request of the schema alone (no HTTP), for the floor query and `order(id)`."""
    from fulfillment.bootstrap import bootstrap
    from gateway.graphql.context import Context
    from gateway.graphql.schema import create_schema

    async def measure() -> dict[str, float]:
        container = bootstrap(Settings(data_dir=work / "graphql"))
        order = await container.order_service.place(SEED, source="bench", actor=BENCH)
        schema, timings = create_schema(container.settings), {}
        for name, document in (("{ __typename }", '{"query": "{ __typename }"}'),
                               ("order(id)", GRAPHQL_ORDER % order.id)):
            request = json.loads(document)
            for rounds in (200, 2000):  # warm-up, then measured
                started = time.perf_counter()
                for _ in range(rounds):
                    await schema.execute(request["query"], variable_values=request.get("variables"),
                                         context_value=Context(container=container, request=None, actor=BENCH))
            timings[name] = round((time.perf_counter() - started) / 2000 * 1e6)
        await container.aclose()
        return timings

    return asyncio.run(measure())


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


def _load(url: str, method: str = "GET", body: Path | None = None) -> dict:
    command = [PYTHON, "-m", "benchmarks.loadgen", url, str(GATEWAY_SECONDS), str(GATEWAY_CONNECTIONS), method]
    result = json.loads(subprocess.check_output(command + ([str(body)] if body else []), cwd=ROOT))
    say(f"  {method} {url}: {result}")
    return result


# --- report -------------------------------------------------------------------------------------

def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    return f"{os.cpu_count()} cores ({cpu}), {memory} GiB, {platform.system()} {platform.release()}"


def versions() -> str:
    from importlib.metadata import version

    packages = ["prefect", "starlette", "uvicorn", "uvloop", "httptools", "strawberry-graphql", "pydantic"]
    return ", ".join([f"Python {platform.python_version()}"] + [f"{p} {version(p)}" for p in packages])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument("--only", choices=["gateway", "scaled", "sagas"],
                        help="run these legs alone and print them; BENCHMARKS.md is left as it is")
    only = parser.parse_args().only
    if only == "gateway":
        gateway_only()
        return
    if only == "scaled":
        scaled_only()
        return
    if only == "sagas":
        sagas_only()
        return
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="order-saga-bench-") as tmp:
        work = Path(tmp)
        say("limit leg: the saga as plain asyncio calls")
        limit = limit_leg(work)
        say(f"  {limit}")
        say("gateway legs (first, while nothing else runs)")
        gateway = gateway_legs(work)
        say("starting the stack as `make up` does")
        with Stack(work, {}) as stack:
            product = product_leg(stack)
            say(f"default-Prefect leg: serve + run_deployment, {DEFAULT_LEG_ORDERS} orders")
            default = default_prefect_leg(stack, work)
            say(f"  {default}")
            rss = {role: peak_rss_mb(pid) for pid, role in stack.processes().items()}
        postgres = postgres_leg(work)
        scaled = scaled_legs(work)
    best = max(scaled, key=lambda leg: leg["sagas_per_s"], default=None)
    bare = gateway["bare route"]["requests_per_s"]
    summary = {
        "sagas_per_s": product["burst"]["sagas_per_s"],
        "default_per_s": default["sagas_per_s"],
        "speedup": round(product["burst"]["sagas_per_s"] / default["sagas_per_s"], 1),
        "limit_per_s": limit["sagas_per_s"],
        "accept_p99_ms": max(product["steady"]["accept_p99_ms"], product["burst"]["accept_p99_ms"]),
        "e2e_p50_ms": product["steady"]["e2e_p50_ms"],
        "rest_get_ratio": round(gateway["REST GET /api/orders/{id}"]["requests_per_s"] / bare, 2),
        "graphql_ratio": round(gateway["GraphQL order(id)"]["requests_per_s"] / bare, 2),
        "lost": product["lost"],
        "api_calls_per_saga": round(sum(product["burst"]["api_calls_per_saga"].values()), 2),
        **({"scaled_per_s": best["sagas_per_s"], "cpu_per_saga_s": round(sum(best["cpu_s_per_saga"].values()), 3)}
           if best else {}),
    }
    write_report(limit, product, default, postgres, scaled, gateway, rss, summary, time.monotonic() - started)
    print(" ".join(f"{key}={value}" for key, value in summary.items()), flush=True)


def gateway_only() -> None:
    with tempfile.TemporaryDirectory(prefix="order-saga-bench-") as tmp:
        gateway = gateway_legs(Path(tmp))
    bare = gateway["bare route"]["requests_per_s"]
    for name, leg in gateway.items():
        if "requests_per_s" in leg:
            print(f"{name}: {leg['requests_per_s']} requests/s, {leg['requests_per_s'] / bare:.0%} of the bare route")
    print(f"schema alone, µs per request: {gateway['graphql_execution_us']}", flush=True)


def sagas_only() -> None:
    with tempfile.TemporaryDirectory(prefix="order-saga-bench-") as tmp:
        work = Path(tmp)
        limit = limit_leg(work)
        with Stack(work, {}) as stack:
            burst = product_leg(stack)["burst"]
            default = default_prefect_leg(stack, work)
    print(f"limit {limit['sagas_per_s']}/s; burst {burst['sagas_per_s']}/s "
          f"(CPU-s per saga {burst['cpu_s_per_saga']}, API calls {burst['api_calls_per_saga']}); "
          f"default Prefect {default['sagas_per_s']}/s; speedup {burst['sagas_per_s'] / default['sagas_per_s']:.1f}x",
          flush=True)


def scaled_only() -> None:
    with tempfile.TemporaryDirectory(prefix="order-saga-bench-") as tmp:
        print(scaled_section(scaled_legs(Path(tmp))), flush=True)


def postgres_leg(work: Path) -> dict | None:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        say("PostgreSQL leg skipped: PostgreSQL is not installed (see the README)")
        return None
    say(f"PostgreSQL leg: the stack with the Prefect server on PostgreSQL, burst of {POSTGRES_BURST} orders")
    with throwaway_postgres(bin_dir, free_port()) as url:
        (work / "pg").mkdir()
        with Stack(work / "pg", {"PREFECT_API_DATABASE_CONNECTION_URL": url}) as stack:
            return burst_leg(stack, POSTGRES_BURST, None)[1]


SCALED_LEGS = [(1, 1), (2, 1), (1, 2), (2, 2)]  # (executors, Prefect API processes)
SCALED_BURST = 200


def scaled_legs(work: Path) -> list[dict]:
    """The scaled profile (PostgreSQL, Redis, the API in processes, the services apart) with 1 and 2 executors
    and 1 and 2 API processes: a burst each, on its own cluster."""
    if postgres_bin_dir() is None or shutil.which("redis-server") is None:
        say("scaled legs skipped: PostgreSQL or Redis is not installed (see the README, \"Scaling out\")")
        return []
    work.chmod(0o755)  # PostgreSQL runs as the `postgres` user when this runs as root
    legs = []
    for executors, api_workers in SCALED_LEGS:
        say(f"scaled leg: {executors} executors, {api_workers} API processes, burst of {SCALED_BURST} orders")
        (leg_dir := work / f"scaled-{executors}x{api_workers}").mkdir()
        options = ("--profile", "scaled", "--executors", str(executors), "--api-workers", str(api_workers))
        ports = {"OrderProcessing__PostgresPort": str(free_port()), "OrderProcessing__RedisPort": str(free_port())}
        with Stack(leg_dir, ports, options) as stack:
            numbers = burst_leg(stack, SCALED_BURST, None)[1]
        legs.append({"executors": executors, "api_workers": api_workers, **numbers})
    return legs


def cpu_section(sqlite_burst: dict, postgres: dict | None) -> str:
    """The CPU each saga costs each process, and the ceiling that puts on sagas/s on this machine."""
    rows = []
    for name, burst in (("SQLite", sqlite_burst), ("PostgreSQL", postgres)):
        if burst is None:
            continue
        cpu = burst["cpu_s_per_saga"]
        server, total = cpu.get("prefect server", 0.0), sum(cpu.values())
        ceiling = min(1 / server, (os.cpu_count() or 1) / total)
        rows.append(f"| {name} | {server} | {cpu.get('worker', 0.0)} | {cpu.get('gateway', 0.0)} | "
                    f"{total:.3f} | {ceiling:.1f} | {burst['sagas_per_s']} |")
    return """## Where the time goes

CPU seconds per saga of each process during the bursts (PostgreSQL's own processes not counted). The
Prefect server is one Python process, so it runs at most 1 / (its CPU per saga) sagas/s; the stack as a whole
at most cores / (total CPU per saga). Every saga is a flow run with three task runs, their state changes,
events and logs, and an artifact, all recorded by the server: that is the floor.

| Prefect database | server | worker | gateway | total | ceiling sagas/s | measured sagas/s |
|---|---|---|---|---|---|---|
""" + "\n".join(rows)


SCALED_ROLES = ["prefect server", "prefect services", "postgresql", "redis", "worker", "gateway"]


def scaled_section(legs: list[dict]) -> str:
    """Each scaled leg's sagas/s and CPU per saga by process, and the model of sagas/s on N cores they give."""
    if not legs:
        return "## Scaled profile\n\nNot measured: PostgreSQL or Redis is not installed on this machine."
    rows = []
    for leg in legs:
        cpu = leg["cpu_s_per_saga"]
        rows.append(f"| {leg['executors']} | {leg['api_workers']} | {leg['terminal']}/{leg['orders']} | "
                    f"{leg['sagas_per_s']} | " + " | ".join(str(cpu.get(role, 0.0)) for role in SCALED_ROLES)
                    + f" | {sum(cpu.values()):.3f} |")
    best = max(legs, key=lambda leg: leg["sagas_per_s"])
    cpu = best["cpu_s_per_saga"]
    total, services = sum(cpu.values()), cpu.get("prefect services", 0.0)
    model = "\n".join(f"| {cores} | {min(cores / total, 1 / services if services else float('inf')):.1f} |"
                       for cores in (2, 4, 8, 16))
    return f"""## Scaled profile

`order-saga up --profile scaled`: Prefect on PostgreSQL and Redis (`prefect-redis`), its API in N uvicorn
processes without services, the services in one process, E executors, the gateway in 2 processes; a burst of
{SCALED_BURST} orders per leg, each leg on a cluster of its own. CPU seconds per saga, summed over the processes
of each kind (the API's N processes, PostgreSQL's backends, ...).

| executors | API processes | terminal | sagas/s | {' | '.join(SCALED_ROLES)} | total |
|---|---|---|---|{'---|' * len(SCALED_ROLES)}---|
{chr(10).join(rows)}

**Model.** Every kind of process but the services runs as several processes, so on N cores the stack runs at
most N / (total CPU per saga) sagas/s, and never more than the one services process allows (1 / its CPU per
saga: {1 / services if services else float('inf'):.0f}/s). From the best leg here ({best['executors']} executor(s),
{best['api_workers']} API process(es): {total:.3f} CPU-s per saga):

| cores | sagas/s at most |
|---|---|
{model}

Measured on {os.cpu_count()} cores the best leg ran {best['sagas_per_s']} sagas/s; the model says
{min((os.cpu_count() or 1) / total, 1 / services if services else float('inf')):.1f}. Scaling out buys cores, not
CPU per saga: the total per saga is what each further core is divided by. On one machine a second executor or
API process only adds processes competing for the same cores."""


def api_calls_section(calls: dict[str, float]) -> str:
    rows = "\n".join(f"| `{route}` | {per_saga} |" for route, per_saga in calls.items())
    before = "\n".join(f"| `{route}` | {per_saga} |" for route, per_saga in API_CALLS_BEFORE.items())
    return f"""## Prefect API calls per saga

What the executors asked of the Prefect API during the burst, per saga (`order_saga_prefect_api_calls_total`
in `/metrics`, by method and route; the flow run's and task runs' events go over the events websocket and are
not counted). Since the executor became a worker of the work pool, a saga also costs a share of the pool
polls, heartbeats, and pause and cancellation checks. A run its executor can take at once is created already
`Pending` (claimed by its creation); any other run is claimed by a `Pending` proposal, one `set_state` more.
An artifact (`POST artifacts/`) is written only for a saga that did not simply complete; the first wave wrote
one for every saga, which its count below does not show.

| route | calls per saga |
|---|---|
{rows}
| **total** | **{sum(calls.values()):.2f}** |

Before (the outbox worker that created and ran each flow run itself; measured once on {API_CALLS_BEFORE_MEASURED}
with the same counter patched into that version, burst of 150 on this machine):

| route | calls per saga |
|---|---|
{before}
| **total** | **{sum(API_CALLS_BEFORE.values()):.2f}** |
"""


def _execution_budget(us: float) -> str:
    if us > 0:
        return f"which would leave {us:.0f} µs to execute `order(id)`"
    return "less than HTTP and Strawberry's view alone take: against this bare route that ratio cannot be reached"


def write_report(limit, product, default, postgres, scaled, gateway, rss, summary, seconds) -> None:
    rows = [
        ("product, steady 2 orders/s", product["steady"]), ("product, burst", product["burst"]),
        *([("product on PostgreSQL, burst", postgres)] if postgres else []),
        ("default Prefect (serve + run_deployment)", default),
    ]
    saga_table = "\n".join(
        f"| {name} | {n['orders']} | {n['terminal']} | {n['sagas_per_s']} | {n['accept_p50_ms']} | "
        f"{n['accept_p99_ms']} | {n['e2e_p50_ms']} | {n['e2e_p99_ms']} |" for name, n in rows)
    bare = gateway["bare route"]["requests_per_s"]
    gateway_table = "\n".join(
        f"| {name} | {leg['requests_per_s']} | {round(leg['requests_per_s'] / bare, 2)} | {leg['p50_ms']} | "
        f"{leg['p99_ms']} | {leg['errors']} |" for name, leg in gateway.items()
        if name not in ("rss_mb", "graphql_execution_us"))
    pure = gateway[PURE_BARE]["requests_per_s"]
    floor = gateway["GraphQL { __typename } (floor)"]["requests_per_s"] / bare
    execution = gateway["graphql_execution_us"]
    view_us = 1e6 / gateway["GraphQL { __typename } (floor)"]["requests_per_s"] - execution["{ __typename }"]
    gateway_table += f"""

`{{ __typename }}` is the floor of the GraphQL machinery itself (Strawberry's HTTP view, body parsing,
extension hooks, graphql-core's executor) before any resolver runs: {floor:.0%} of the bare route here.
`order(id)` reaches {summary['graphql_ratio']:.0%}; the difference is resolving its fields (one DataLoader
batch, one point read, eight fields through graphql-core). Executing the schema alone, without HTTP, takes
{execution['{ __typename }']} µs for `{{ __typename }}` and {execution['order(id)']} µs for `order(id)` per
request on this machine, against about {1e6 / bare:.0f} µs for a whole request to the bare route. So HTTP and
Strawberry's view cost about {view_us:.0f} µs per request before execution (a floor request less its
execution); at {GRAPHQL_TARGET:.0%} of the bare route a request may take {1e6 / (GRAPHQL_TARGET * bare):.0f} µs,
{_execution_budget(1e6 / (GRAPHQL_TARGET * bare) - view_us)}.

uvicorn serves the gateway, the bare route and the Prefect server on uvloop and httptools (dependencies since
2026-11-30; the Prefect server spends 12-17% less CPU per saga on them). They make the bare route, whose time is
nearly all HTTP parsing and the event loop, far faster than the gateway, whose time is mostly its own, so the
ratios above fell when they came while the gateway's requests/s rose. The last row is the bare route on uvicorn's
pure-Python parser and loop (h11, asyncio), as every run before had it: against that one, in this run, REST GET
reaches {gateway["REST GET /api/orders/{id}"]["requests_per_s"] / pure:.0%} and GraphQL `order(id)`
{gateway["GraphQL order(id)"]["requests_per_s"] / pure:.0%}."""
    rss_rows = {**{f"stack: {k}": v for k, v in rss.items()}, **{f"gateway leg: {k}": v for k, v in gateway["rss_mb"].items()}}
    (ROOT / "BENCHMARKS.md").write_text(f"""# Benchmarks

Written by `make bench` ({datetime.now().strftime('%Y-%m-%d %H:%M')}, {seconds:.0f} s). Every leg ran in the
same run on the same machine; ratios compare legs of this run only.

- **Machine:** {machine()}
- **Versions:** {versions()}
- **Settings:** the stack as `make up` starts it on embedded defaults: SQLite order store and services,
  Prefect server on SQLite (write transactions `BEGIN IMMEDIATE`, task runs recorded in batches), one worker
  executing flow runs in-process, {Settings().worker_concurrency} at once; uvicorn
  on uvloop and httptools (its `auto` choices once they are installed). Load generator: {GATEWAY_CONNECTIONS} keep-alive connections for
  {GATEWAY_SECONDS} s in its own process. Steady leg {STEADY_RATE:g} orders/s for {STEADY_SECONDS} s.

## Sagas

| leg | orders | terminal | sagas/s | accept p50 ms | accept p99 ms | e2e p50 ms | e2e p99 ms |
|---|---|---|---|---|---|---|---|
{saga_table}
| limit: plain asyncio, no orchestrator | {limit['orders']} | {limit['orders']} | {limit['sagas_per_s']} | | | | |

Lost or doubled (not terminal, or not exactly one flow run): **{summary['lost']}**. Speedup over default
Prefect: **{summary['speedup']}×**.

{cpu_section(product["burst"], postgres)}

{scaled_section(scaled)}

{api_calls_section(product["burst"]["api_calls_per_saga"])}

## Gateway

| route | requests/s | ratio to bare | p50 ms | p99 ms | errors |
|---|---|---|---|---|---|
{gateway_table}

## Peak RSS (MB)

| process | peak RSS |
|---|---|
""" + "\n".join(f"| {name} | {value} |" for name, value in rss_rows.items()) + f"""

## Summary

```
{' '.join(f'{key}={value}' for key, value in summary.items())}
```
""")


if __name__ == "__main__":
    main()

"""The supervisor of `order-saga up`, run as its own process over plain child processes that we kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployments.supervisor import Backoff
from tests.prefect_server import free_port

ROOT = Path(__file__).resolve().parents[2]
FAST = {"first_s": 0.05, "max_s": 0.2, "reset_after_s": 0.6}

DRIVER = """
import json, logging, os, sys
from deployments.supervisor import Backoff, Child, Supervisor
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
spec = json.loads(sys.argv[1])
children = [Child(**child) for child in spec["children"]]
supervisor = Supervisor(children, dict(os.environ), backoff=Backoff(**spec["backoff"]), ready_timeout_s=10,
                        stop_timeout_s=5, on_up=lambda: print("order-saga is up", flush=True))
sys.exit(supervisor.run())
"""
# A child that says who it is, then sleeps.
SLEEPER = "import os, sys, time; print(sys.argv[1], 'pid', os.getpid(), flush=True); time.sleep(60)"
# A child that takes a moment to start, then answers HTTP 200 on GET /.
WEB = """import http.server, os, sys, time
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
print(sys.argv[1], 'pid', os.getpid(), flush=True)
time.sleep(0.3)
http.server.HTTPServer(('127.0.0.1', int(sys.argv[2])), Ok).serve_forever()
"""


def sleeper(name: str) -> dict:
    return {"name": name, "command": [sys.executable, "-c", SLEEPER, name]}


def web(name: str, port: int) -> dict:
    return {"name": name, "command": [sys.executable, "-c", WEB, name, str(port)],
            "ready_url": f"http://127.0.0.1:{port}/"}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Supervised:
    """A supervisor process over the given children; its output (and theirs) goes to a log file."""

    def __init__(self, tmp_path: Path, children: list[dict], backoff: dict):
        self.log = tmp_path / "supervisor.log"
        spec = json.dumps({"children": children, "backoff": backoff})
        with self.log.open("w") as output:
            self.process = subprocess.Popen([sys.executable, "-c", DRIVER, spec], cwd=ROOT, stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def pids(self, name: str) -> list[int]:
        return [int(line.split()[-1]) for line in self.lines() if line.startswith(f"{name} pid ")]

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"no {what} after {timeout}s:\n{self.log.read_text()}"
            time.sleep(0.02)

    def wait_up(self) -> None:
        self.wait_for(lambda: "order-saga is up" in self.lines(), "start-up")

    def restart_of(self, name: str, count: int) -> list[int]:
        """Waits for the `count`-th process of `name` and returns the pids of all of them."""
        self.wait_for(lambda: len(self.pids(name)) >= count, f"process {count} of {name}")
        return self.pids(name)

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(10)


@pytest.fixture
def supervise(tmp_path) -> Iterator[Callable[..., Supervised]]:
    started: list[Supervised] = []

    def start(children: list[dict], backoff: dict = FAST) -> Supervised:
        started.append(Supervised(tmp_path, children, backoff))
        return started[-1]

    yield start
    for supervised in started:  # whatever a failed test left behind
        if supervised.process.poll() is None:
            supervised.process.send_signal(signal.SIGTERM)
            try:
                supervised.process.wait(10)
            except subprocess.TimeoutExpired:
                supervised.process.kill()
                supervised.process.wait()
        for name in {child["name"] for child in json.loads(supervised.process.args[-1])["children"]}:
            for pid in filter(alive, supervised.pids(name)):
                os.kill(pid, signal.SIGKILL)


def test_a_child_that_dies_is_restarted_with_a_log_line_and_sigterm_stops_every_child(supervise):
    stack = supervise([sleeper("server"), sleeper("worker"), sleeper("gateway")])
    stack.wait_up()
    [worker] = stack.restart_of("worker", 1)

    stack.kill(worker)

    [_, restarted] = stack.restart_of("worker", 2)
    assert restarted != worker and alive(restarted)
    assert "worker exited with code -9; restarting in 0.05s (restart 1)" in stack.lines()
    assert stack.terminate() == 0
    lines = stack.lines()
    assert lines[-4:] == ["stopping gateway ...", "stopping worker ...", "stopping server ...", "stopped"]
    assert not any(alive(pid) for name in ("server", "worker", "gateway") for pid in stack.pids(name))


def test_the_backoff_doubles_for_restarts_in_a_row_and_starts_over_once_the_child_stayed_up(supervise):
    stack = supervise([sleeper("worker")])
    stack.wait_up()

    stack.kill(stack.restart_of("worker", 1)[-1])
    stack.kill(stack.restart_of("worker", 2)[-1])
    third = stack.restart_of("worker", 3)[-1]
    time.sleep(FAST["reset_after_s"] + 0.1)
    stack.kill(third)
    stack.restart_of("worker", 4)

    assert [line for line in stack.lines() if "exited" in line] == [
        "worker exited with code -9; restarting in 0.05s (restart 1)",
        "worker exited with code -9; restarting in 0.1s (restart 2)",
        "worker exited with code -9; restarting in 0.05s (restart 3)",
    ]
    assert stack.terminate() == 0


def test_a_restarted_child_with_a_readiness_url_is_ready_before_the_next_child_restarts(supervise):
    stack = supervise([web("server", free_port()), sleeper("worker")])
    stack.wait_up()
    [first_worker] = stack.restart_of("worker", 1)
    assert stack.lines().index("server is ready") < stack.lines().index(f"worker pid {first_worker}")

    stack.kill(stack.pids("server")[0])
    stack.kill(first_worker)

    [_, worker] = stack.restart_of("worker", 2)
    lines = stack.lines()
    second_ready = len(lines) - 1 - lines[::-1].index("server is ready")
    assert lines.count("server is ready") == 2
    assert second_ready < lines.index(f"worker pid {worker}")
    assert stack.terminate() == 0
    assert stack.lines()[-1] == "stopped"


def test_a_child_that_exits_before_the_stack_is_up_fails_the_start_and_stops_the_others(supervise):
    stack = supervise([sleeper("worker"), {"name": "gateway", "command": [sys.executable, "-c", "exit(3)"],
                                           "ready_url": f"http://127.0.0.1:{free_port()}/"}])

    assert stack.process.wait(10) != 0
    lines = stack.lines()
    assert "order-saga is up" not in lines
    assert lines[-3:] == ["stopping worker ...", "stopped",
                          "gateway exited with code 3 before the stack was up; stopping the stack"]
    assert not alive(stack.pids("worker")[0])


def test_the_backoff_is_1_2_4_seconds_and_so_on_at_most_30():
    assert [Backoff().delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert Backoff().delay(10_000) == 30


def test_a_child_s_own_environment_goes_over_the_stack_s_for_that_child_only(supervise):
    says = "import os, sys, time; print(sys.argv[1], 'says', os.environ.get('STACK_SETTING'), flush=True); time.sleep(60)"
    stack = supervise([{"name": "services", "command": [sys.executable, "-c", says, "services"],
                        "environment": [["STACK_SETTING", "false"]]},
                       {"name": "api", "command": [sys.executable, "-c", says, "api"]}])
    stack.wait_for(lambda: len([line for line in stack.lines() if " says " in line]) == 2, "both children")

    assert {line for line in stack.lines() if " says " in line} == {"services says false", "api says None"}
    assert stack.terminate() == 0

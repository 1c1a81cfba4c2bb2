"""The supervisor of `order-saga up`: starts the stack's processes in order, each once the one before is ready,
restarts one that exits, and stops them all together.

Once the stack is up, a process that exits is restarted after a back-off (1 s, doubling, at most 30 s; 1 s again
once it has stayed up 60 s); a restarted process is waited for, as at start-up, before the next one is restarted.
At start-up, a process that exits before it is ready fails the start: a configuration to fix, not a fault to heal.
Ctrl-C or SIGTERM stops them in reverse order.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import httpx

log = logging.getLogger("deployments.stack")

READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = 20
TICK_S = 0.1


@dataclass(frozen=True)
class Child:
    """A process of the stack, as data: how to start it, when it is ready, how to ask it to stop."""

    name: str
    command: Sequence[str]
    ready_url: str | None = None  # answers 200 once the process serves
    ready_port: int | None = None  # accepts TCP connections on 127.0.0.1 once the process serves
    stop_signal: signal.Signals = signal.SIGTERM
    one_shot: bool = False  # a step run to completion at start-up (exit 0), in order, never restarted
    user: str | None = None  # the user to run as, when not the supervisor's (PostgreSQL refuses root)
    environment: tuple[tuple[str, str], ...] = ()  # this child's own settings, over the stack's environment

    def is_ready(self) -> bool:
        """Whether the started process serves; a child with neither probe is ready once started."""
        if self.ready_url is not None:
            try:
                return httpx.get(self.ready_url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        return self.ready_port is None or accepts_connections(self.ready_port)


def accepts_connections(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Backoff:
    """The wait before a child is restarted: `first_s`, doubled for each restart in a row, at most `max_s`.
    A child that stayed up `reset_after_s` before it exited is restarted after `first_s` again."""

    first_s: float = 1
    max_s: float = 30
    reset_after_s: float = 60

    def delay(self, in_a_row: int) -> float:
        return min(self.first_s * 2 ** min(in_a_row, 32), self.max_s)


@dataclass
class _Running:
    """A child and its current process."""

    child: Child
    process: subprocess.Popen | None = None
    started_at: float = 0
    restarts: int = 0
    in_a_row: int = 0
    restart_at: float | None = None  # set while the child waits for its restart


class Supervisor:
    """Starts the children in order, each once the previous one is ready; restarts a child that exits; on
    SIGINT or SIGTERM stops them all in reverse order and prints `stopped`."""

    def __init__(self, children: Sequence[Child], env: Mapping[str, str], *, backoff: Backoff = Backoff(),
                 ready_timeout_s: float = READY_TIMEOUT_S, stop_timeout_s: float = STOP_TIMEOUT_S,
                 on_up: Callable[[], None] = lambda: None):
        self._running = [_Running(child) for child in children]
        self._env = dict(env)
        self._backoff = backoff
        self._ready_timeout_s = ready_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._on_up = on_up
        self._stopping = False

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._start_all()
            self._on_up()
            self._supervise()
        except _Stop:
            return 0
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _start_all(self) -> None:
        for running in self._running:
            log.info(f"{'running' if running.child.one_shot else 'starting'} {running.child.name} ...")
            if not self._start(running):
                raise SystemExit(f"{running.child.name} exited with code {running.process.returncode} "
                                 "before the stack was up; stopping the stack")

    def _supervise(self) -> NoReturn:
        while True:
            for running in self._running:
                if running.child.one_shot:
                    continue
                if running.restart_at is None and running.process.poll() is not None:
                    self._schedule_restart(running)
                elif running.restart_at is not None and time.monotonic() >= running.restart_at:
                    running.restart_at = None
                    self._start(running)  # if it fails, the next round sees it exited
            self._pause(TICK_S)

    def _schedule_restart(self, running: _Running) -> None:
        now = time.monotonic()
        if now - running.started_at >= self._backoff.reset_after_s:
            running.in_a_row = 0
        delay = self._backoff.delay(running.in_a_row)
        running.in_a_row += 1
        running.restarts += 1
        running.restart_at = now + delay
        log.warning(f"{running.child.name} exited with code {running.process.returncode}; "
                    f"restarting in {delay:g}s (restart {running.restarts})")

    def _start(self, running: _Running) -> bool:
        """Starts the child and waits until it is ready: False if it exited or did not get ready in time."""
        child = running.child
        running.process = subprocess.Popen(child.command, env={**self._env, **dict(child.environment)},
                                           start_new_session=True, user=child.user)
        running.started_at = time.monotonic()
        if child.one_shot:
            return self._wait_done(running)
        if child.ready_url is None and child.ready_port is None:
            return True
        deadline = running.started_at + self._ready_timeout_s
        while running.process.poll() is None:
            if time.monotonic() > deadline:
                log.error(f"{child.name} did not get ready within {self._ready_timeout_s:g}s "
                          f"({child.ready_url or f'port {child.ready_port}'})")
                running.process.kill()
                running.process.wait()
                return False
            if child.is_ready():
                log.info(f"{child.name} is ready")
                return True
            self._pause(0.3)
        return False

    def _wait_done(self, running: _Running) -> bool:
        """Waits for a one-shot step: True once it exited 0."""
        while running.process.poll() is None:
            self._pause(TICK_S)
        return running.process.returncode == 0

    def _pause(self, seconds: float) -> None:
        """Sleeps, in short naps so that a stop request is seen at once; raises `_Stop` on one."""
        deadline = time.monotonic() + seconds
        while not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, TICK_S))
        raise _Stop

    def _on_signal(self, signum: int, frame) -> None:
        self._stopping = True  # only a flag: raising here could leave a process just forked untracked

    def _stop_all(self) -> None:
        self._stopping = True
        for running in reversed(self._running):
            process = running.process
            if process is None or process.poll() is not None:
                continue
            log.info(f"stopping {running.child.name} ...")
            process.send_signal(running.child.stop_signal)
            try:
                process.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.info("stopped")


class _Stop(Exception):
    pass

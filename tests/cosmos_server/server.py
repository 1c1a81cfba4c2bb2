"""Installs (`npm ci`, once) and runs the local Cosmos DB server of `launch.js` for the integration tests.

    with running_cosmos_server(log_dir) as server:
        settings = Settings(cosmos_connection_string=server.connection_string, ...)

The server keeps its data in memory and accepts any key; each test isolates itself with a database of its own.
"""

from __future__ import annotations

import select
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.npm_packages import ensure_installed

HERE = Path(__file__).resolve().parent
PACKAGE = "@vercel/cosmosdb-server"
# The well-known key of the Cosmos DB emulator: the server accepts any key, the SDK wants a base64 one.
EMULATOR_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
START_TIMEOUT_S = 15
STOP_TIMEOUT_S = 5


@dataclass(frozen=True)
class CosmosServer:
    url: str
    log: Path

    @property
    def connection_string(self) -> str:
        return f"AccountEndpoint={self.url};AccountKey={EMULATOR_KEY};"


@contextmanager
def running_cosmos_server(log_dir: Path, *, progress: Callable[[str], None] = print) -> Iterator[CosmosServer]:
    """A server on plain http:// at a free port of 127.0.0.1 for the duration of the block; its output goes
    to `log_dir`. (Plain HTTP, because the SDK skips TLS verification for 127.0.0.1 anyway; launch.js also
    serves HTTPS.)"""
    ensure_installed(HERE, PACKAGE, progress)
    log = log_dir / "cosmosdb-server.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(["node", str(HERE / "launch.js"), "--no-ssl"], cwd=HERE,
                                   stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        yield CosmosServer(url=_announced_url(process, log), log=log)
    finally:
        _stop(process)


def _announced_url(process: subprocess.Popen, log: Path) -> str:
    """The URL of the "listening <url>" line that launch.js prints when it is ready."""
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("listening "):
        raise RuntimeError(f"the Cosmos DB server did not start within {START_TIMEOUT_S} s:\n{line}{log.read_text()}")
    return line.split()[1]


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()

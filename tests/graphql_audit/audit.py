"""Runs the GraphQL-over-HTTP audit of the npm package graphql-http (`audit.js`) against a GraphQL endpoint;
the package is installed (`npm ci`) into tests/graphql_audit/node_modules on first use."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.npm_packages import ensure_installed

HERE = Path(__file__).resolve().parent
PACKAGE = "graphql-http"
TIMEOUT_S = 120


def run_audit(url: str, progress: Callable[[str], None] = print) -> list[dict]:
    """The result of each audit: `{"id", "name", "status", "reason"?}`, status "ok" when it passed."""
    ensure_installed(HERE, PACKAGE, progress)
    result = subprocess.run(["node", str(HERE / "audit.js"), url], cwd=HERE, capture_output=True, text=True,
                            timeout=TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the audit could not run against {url}:\n{result.stderr}")
    return json.loads(result.stdout)

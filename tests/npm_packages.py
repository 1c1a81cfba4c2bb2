"""The Node packages the tests run (a Cosmos DB server, the GraphQL-over-HTTP audit): each lives in a folder of
its own with a package.json and a package-lock.json, and is installed there (`npm ci`) on first use."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def ensure_installed(folder: Path, package: str, progress: Callable[[str], None] = print) -> None:
    """Runs `npm ci` in `folder` unless the version of `package` its lock file pins is already installed."""
    pinned = _pinned_version(folder, package)
    if _installed_version(folder, package) == pinned:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm not found: these tests need Node.js and npm to install {package}")
    progress(f"installing {package} {pinned} into {folder / 'node_modules'} (npm ci) ...")
    started = time.monotonic()
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"npm ci failed in {folder}:\n{result.stdout}{result.stderr}")
    progress(f"installed {package} in {time.monotonic() - started:.0f} s")


def _pinned_version(folder: Path, package: str) -> str:
    lock = json.loads((folder / "package-lock.json").read_text())
    return lock["packages"][f"node_modules/{package}"]["version"]


def _installed_version(folder: Path, package: str) -> str | None:
    manifest = folder / "node_modules" / package / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.exists() else None

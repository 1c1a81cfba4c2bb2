"""Debian packages a test needs, installed with apt-get when missing (the tests run as root, here and in CI)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest


def debian_packages(present: Callable[[], bool], *packages: str) -> None:
    """Installs `packages` unless `present()` says they are there; fails the test, saying what to install, when
    they are missing and cannot be installed."""
    if present():
        return
    wanted = " ".join(packages)
    if os.geteuid() != 0:
        pytest.fail(f"{wanted} missing: install Debian's packages (apt-get install {wanted}) as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", *packages]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    if not present():
        pytest.fail(f"apt-get installed {wanted}, but they are still not found")

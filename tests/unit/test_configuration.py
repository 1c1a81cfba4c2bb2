"""Configuration as an operator meets it: bad values named one line each, and links that follow the API URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.stack import banner
from fulfillment.settings import Settings

BIN = Path(sys.executable).parent
BAD = {"OrderProcessing__GatewayPort": "abc", "OrderProcessing__StepAttempts": "0", "OrderProcessing__ApiKeys": "short"}
ENTRY_POINTS = {
    "gateway": [sys.executable, "-m", "gateway"],
    "worker": [sys.executable, "-m", "deployments.worker"],
    "up": [str(BIN / "order-saga"), "up"],
    "submit": [str(BIN / "order-saga"), "submit", "-"],
}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_a_bad_value_stops_every_entry_point_with_one_line_per_option_and_no_traceback(entry_point, tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), **BAD}
    done = subprocess.run(ENTRY_POINTS[entry_point], cwd=tmp_path, env=env, input="{}", capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert sorted(done.stderr.splitlines()) == [
        "configuration error: OrderProcessing__ApiKeys: every key must be at least 16 characters long",
        "configuration error: OrderProcessing__GatewayPort: Input should be a valid integer, unable to parse string "
        "as an integer",
        "configuration error: OrderProcessing__StepAttempts: Input should be greater than or equal to 1",
    ]


def test_the_prefect_ui_follows_the_api_url_unless_set(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4300/api/")
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    settings = Settings(_env_file=None)
    assert settings.prefect_ui_url == "http://127.0.0.1:4300"
    assert "Prefect   http://127.0.0.1:4300  " in banner(settings)
    monkeypatch.setenv("PREFECT_UI_URL", "https://prefect.example.com/")
    assert Settings(_env_file=None).prefect_ui_url == "https://prefect.example.com"

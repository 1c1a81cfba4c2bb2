"""Logs: one format for every logger of a process, and business refusals without a traceback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from deployments.worker import RefusalIsNoError
from fulfillment.domain import StepRefused

ROOT = Path(__file__).resolve().parents[2]
EVERY_KIND_OF_LOGGER = """
import logging
from fulfillment.logs import configure_logging
configure_logging()
import prefect, uvicorn
for name in ("uvicorn.error", "prefect.server", "fulfillment.saga", "strawberry.execution"):
    logging.getLogger(name).warning("from %s", name)
"""


def run(env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", EVERY_KIND_OF_LOGGER], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60, check=True)
    return done.stderr.splitlines()


def test_every_logger_of_a_process_writes_json_lines_when_not_on_a_terminal():
    lines = run({"LOG_FORMAT": ""})
    assert [json.loads(line)["logger"] for line in lines] == [
        "uvicorn.error", "prefect.server", "fulfillment.saga", "strawberry.execution"]


def test_the_console_format_is_for_people():
    lines = run({"LOG_FORMAT": "console"})
    assert len(lines) == 4 and all(" WARNING " in line and not line.startswith("{") for line in lines)


def test_a_refused_step_is_a_warning_without_traceback():
    try:
        raise StepRefused("OutOfStock", "prod-1: 101 requested, 100 available")
    except StepRefused as error:
        record = logging.LogRecord("prefect.task_runs", logging.ERROR, "", 0, "Task run failed with exception: %r",
                                   (error,), (type(error), error, error.__traceback__))
    assert RefusalIsNoError().filter(record)
    assert (record.levelname, record.exc_info) == ("WARNING", None)

"""Logs: one JSON object per line on stderr, or readable lines for a person at a terminal.

`LOG_FORMAT=json` or `console`; unset, console when stderr is a terminal and JSON otherwise (a service manager,
a container, a pipe). Every logger of a process writes through the one handler `configure_logging` installs:
ours, Prefect's (its console handlers are swapped for ours; its API handlers, which ship flow-run logs to the UI,
stay) and uvicorn's (served with `log_config=None`, so its records reach the root logger).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from opentelemetry import trace

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
LOG_FORMATS = ("json", "console")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
OURS = ("fulfillment", "gateway", "deployments")


def _extra(record: logging.LogRecord) -> dict:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extra(record),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    """`12:00:00.123 INFO    logger: message key=value ...`, the traceback below when there is one."""

    def __init__(self):
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={value}" for key, value in _extra(record).items())
        return f"{super().formatMessage(record)} {fields}".rstrip()


def log_format() -> str:
    """`LOG_FORMAT`, or console on a terminal and JSON otherwise."""
    chosen = os.environ.get("LOG_FORMAT", "").strip().lower()
    if not chosen:
        return "console" if sys.stderr.isatty() else "json"
    if chosen not in LOG_FORMATS:
        raise SystemExit(f"LOG_FORMAT: {chosen!r} is not a log format; use json or console")
    return chosen


def log_level(level: str | None = None) -> str:
    chosen = (level or os.environ.get("LOG_LEVEL") or "INFO").strip().upper()
    if chosen not in LEVELS:
        raise SystemExit(f"LOG_LEVEL: {chosen!r} is not a level; use one of {', '.join(LEVELS)}")
    return chosen


def configure_logging(level: str | None = None) -> None:
    """One stderr handler, in the chosen format, for every logger of the process; ours at `LOG_LEVEL` (INFO).

    Prefect configures its logging once, on import (and the Prefect server's `create_app` again): that is done
    first here, so that its console handlers are replaced now and not reinstated later."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format() == "json" else ConsoleFormatter())
    level = log_level(level)
    for name in OURS:
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).propagate = True
    for logger in [logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)]:
        kept = [h for h in logger.handlers if not _writes_to_console(h)]
        if len(kept) < len(logger.handlers) and not logger.propagate:  # e.g. uvicorn's under Prefect's config
            kept.append(handler)
        logger.handlers[:] = kept
    logging.root.handlers[:] = [handler]


def _writes_to_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
        sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)

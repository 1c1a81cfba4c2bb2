"""Structured logs: one JSON object per line, with whatever `extra=` fields the call passed (order_id, ...)."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from opentelemetry import trace

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **{key: value for key, value in vars(record).items() if key not in _STANDARD},
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str | None = None) -> None:
    """JSON lines on stderr for the `fulfillment` and `gateway` loggers (level from `LOG_LEVEL`, INFO)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("fulfillment", "gateway"):
        logger = logging.getLogger(name)
        # Keep handlers others attached (Prefect's, which ship saga logs to the UI); replace only ours.
        logger.handlers[:] = [h for h in logger.handlers if not isinstance(h.formatter, JsonFormatter)] + [handler]
        logger.setLevel(level or os.environ.get("LOG_LEVEL", "INFO"))
        logger.propagate = False

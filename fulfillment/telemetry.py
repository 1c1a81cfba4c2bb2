"""Traces (OpenTelemetry) and metrics (Prometheus), shared by every process.

Traces are off unless `OTEL_TRACES_EXPORTER` is `console` or `otlp` (the OTLP/HTTP exporter then reads the
standard `OTEL_EXPORTER_OTLP_*` variables; `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the
process). A trace starts at the entry point (HTTP request, queue message, event) and crosses into the worker
through the W3C `traceparent` stored with the order or event; Prefect continues it from the flow run's
`__OTEL_TRACEPARENT` label with a span per flow run and per task run.

Metrics live in the process that observes them; with `PROMETHEUS_MULTIPROC_DIR` set (as `make up` does),
the gateway's `/metrics` aggregates every process's values.
"""

from __future__ import annotations

import os

from opentelemetry import propagate, trace
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

PREFECT_TRACEPARENT_LABEL = "__OTEL_TRACEPARENT"
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

tracer = trace.get_tracer("order-saga")

ORDERS_ACCEPTED = Counter("order_saga_orders_accepted_total", "Orders accepted, by entry point", ["source"])
SAGA_OUTCOMES = Counter("order_saga_saga_outcomes_total", "Sagas finished, by final order status", ["status"])
SAGA_DURATION = Histogram("order_saga_saga_duration_seconds", "Duration of a saga flow run", ["status"],
                          buckets=DURATION_BUCKETS)
STEP_DURATION = Histogram("order_saga_step_duration_seconds", "Duration of a saga step or compensation",
                          ["action", "outcome"], buckets=DURATION_BUCKETS)
COMPENSATIONS = Counter("order_saga_compensations_total", "Compensations run, by compensation", ["compensation"])
COMPENSATION_FAILURES = Counter("order_saga_compensation_failures_total",
                                "Compensations that failed (manual intervention required)", ["compensation"])
DEAD_LETTERS = Counter("order_saga_dead_letters_total", "Service Bus messages dead-lettered, by reason", ["reason"])
WEBHOOK_EVENTS = Counter("order_saga_webhook_events_total", "Event Grid events received, by outcome", ["outcome"])
LOW_STOCK_ALERTS = Counter("order_saga_low_stock_alerts_total", "Inventory.LowStock alerts raised")
PARKED_JOBS = Counter("order_saga_parked_jobs_total",
                      "Saga or inventory-event runs parked after MaxJobAttempts runs (re-drive: Retry in the UI)",
                      ["kind"])
PREFECT_API_CALLS = Counter("order_saga_prefect_api_calls_total", "Calls of the Prefect API by the executors",
                            ["method"])


def configure_tracing(service_name: str) -> None:
    """Installs a tracer provider when `OTEL_TRACES_EXPORTER` asks for one; otherwise tracing stays a no-op."""
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none"):
        return
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        raise SystemExit(f"OTEL_TRACES_EXPORTER={exporter_name!r}: use console, otlp or none")
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def tracing_configured() -> bool:
    """Whether this process records spans (a tracer provider is installed), so entry points need to start them."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def shutdown_tracing() -> None:
    """Flushes the spans still buffered (a no-op when tracing is off)."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def current_traceparent() -> str | None:
    """The W3C traceparent of the active span, to continue this trace in another process."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def context_from_traceparent(traceparent: str | None):
    return propagate.extract({"traceparent": traceparent} if traceparent else {})


def prometheus_text() -> bytes:
    """Every process's metrics when running multi-process, else this process's."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


STALE_STOCK_EVENTS = Counter("order_saga_stale_stock_events_total",
                             "Inventory.StockUpdated events skipped: not newer than the product's last applied one")

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


DEAD_LETTER_REASONS = ("InvalidJson", "DeserializationFailed", "ValidationFailed", "ProcessingFailed")
ORDER_SOURCES = ("rest", "graphql", "servicebus", "eventgrid")
PARKED_KINDS = ("order", "inventory")


def declare_series() -> None:
    """Every series of a known label value, at 0 from the start: a dashboard or an alert on a rate has the series
    before its first event (no `absent()`, no gap). The gateway calls it; its `/metrics` adds every process's."""
    from fulfillment.domain import Compensation, OrderStatus, Step
    from fulfillment.service.events import Outcome

    ends = [str(status) for status in OrderStatus if status.is_terminal]
    known = {
        ORDERS_ACCEPTED: ORDER_SOURCES,
        SAGA_OUTCOMES: ends,
        SAGA_DURATION: ends,
        STEP_DURATION: [(str(action), outcome) for action in [*Step, *Compensation] for outcome in ("succeeded", "failed")],
        COMPENSATIONS: [str(compensation) for compensation in Compensation],
        COMPENSATION_FAILURES: [str(compensation) for compensation in Compensation],
        DEAD_LETTERS: DEAD_LETTER_REASONS,
        WEBHOOK_EVENTS: [str(outcome) for outcome in Outcome],
        PARKED_JOBS: PARKED_KINDS,
    }
    for metric, values in known.items():
        for value in values:
            metric.labels(*(value if isinstance(value, tuple) else (value,)))

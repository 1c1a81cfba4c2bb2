"""A server span per HTTP request, continuing a caller's `traceparent`, and Prometheus `/metrics`."""

from __future__ import annotations

from opentelemetry import propagate
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fulfillment.telemetry import prometheus_text, tracer


class TracingMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        method = scope["method"]
        with tracer.start_as_current_span(f"{method} {scope['path']}", context=propagate.extract(carrier),
                                          kind=SpanKind.SERVER,
                                          attributes={"http.request.method": method, "url.path": scope["path"]}) as span:

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            await self.app(scope, receive, send_with_status)
            if route := getattr(scope.get("route"), "path", None):  # the template, not the id-bearing path
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)


async def metrics(request: Request) -> Response:
    return Response(prometheus_text(), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics)]

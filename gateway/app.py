"""The gateway app factory: REST shims, /graphql, health checks and the embedded downstream services."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route, WebSocketRoute
from strawberry.asgi import GraphQL

from fulfillment.bootstrap import bootstrap
from fulfillment.service.requests import decode_json
from fulfillment.settings import Settings
from fulfillment.telemetry import tracing_configured
from gateway import events, health, observability, openapi, rest
from gateway.downstream import downstream_routes
from gateway.errors import exception_handlers
from gateway.graphql.context import Context
from gateway.graphql.schema import create_schema


class GraphQLApp(GraphQL):
    async def get_context(self, request, response) -> Context:
        return Context(container=request.state.container)

    def decode_json(self, data: str | bytes) -> object:
        """Strawberry answers 400 only to a `JSONDecodeError`: so to every body `decode_json` refuses (not UTF-8,
        nested too deeply), not a 500. Floats, as GraphQL's `Float` takes no `Decimal`."""
        try:
            return decode_json(data, parse_float=float)
        except ValueError as error:
            raise json.JSONDecodeError(str(error), "", 0) from None


def embedded_services(settings: Settings, container) -> list[Mount]:
    """The embedded inventory, payments and shipping over HTTP (docs/downstream-http.md), for demos and for
    trying an HTTP client against them; not served once real services are configured."""
    if settings.inventory_base_url or settings.payment_base_url or settings.shipping_base_url:
        return []
    return [Mount("/services", routes=downstream_routes(*container.embedded_services))]


def create_app(settings: Settings | None = None, **overrides) -> Starlette:
    """`overrides` replace single adapters (see `bootstrap`); the services are closed when the app stops."""
    container = bootstrap(settings or Settings(), **overrides)
    settings = container.settings

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict]:
        try:
            yield {"container": container}
        finally:
            await container.aclose()

    graphql = GraphQLApp(create_schema(settings.graphql_max_depth),
                         graphql_ide="graphiql" if settings.graphiql else None)
    return Starlette(
        routes=[
            *rest.routes,
            *(events.routes if settings.event_grid_webhook_key else []),
            *health.routes,
            *openapi.routes,
            *observability.routes,
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            *embedded_services(settings, container),
        ],
        middleware=[Middleware(observability.TracingMiddleware)] if tracing_configured() else [],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )

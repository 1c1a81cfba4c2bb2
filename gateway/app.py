"""The gateway app factory: REST shims, /graphql and health checks, each behind the request limits and the
authentication of the settings (the embedded downstream services have a loopback port of their own)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.routing import Route, WebSocketRoute
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UNSET

from fulfillment.bootstrap import bootstrap
from fulfillment.service.requests import decode_json
from fulfillment.settings import Settings
from fulfillment.telemetry import tracing_configured
from gateway import events, graphiql, health, observability, openapi, rest
from gateway.auth import Authenticator, IssuerUnavailable, Unauthenticated, create_authenticator
from gateway.errors import exception_handlers
from gateway.graphql.context import Context
from gateway.graphql.over_http import GraphQLOverHTTP
from gateway.graphql.schema import create_schema
from gateway.limits import BodyLimit

ISSUER_TIMEOUT_S = 5.0


class GraphQLApp(GraphQLOverHTTP):
    """Strawberry's ASGI app, authenticating each request as the REST routes do (401 before anything runs),
    except the GraphiQL page itself; a WebSocket authenticates with its `connection_init` payload, and a
    refused one is closed with 4403, as graphql-transport-ws prescribes."""

    def __init__(self, settings: Settings, authenticator: Authenticator):
        super().__init__(create_schema(settings), graphql_ide="graphiql" if settings.graphiql else None)
        self._authenticator = authenticator

    def decode_json(self, data: str | bytes) -> object:
        """Strawberry answers 400 only to a `JSONDecodeError`: so to every body `decode_json` refuses (not UTF-8,
        nested too deeply), not a 500. Floats, as GraphQL's `Float` takes no `Decimal`."""
        try:
            return decode_json(data, parse_float=float)
        except ValueError as error:
            raise json.JSONDecodeError(str(error), "", 0) from None

    async def run(self, request, context=UNSET, root_value=UNSET):
        if self.is_websocket_request(request):
            context = self._context(request, actor=None)
        elif not self.should_render_graphql_ide(self.request_adapter_class(request)):
            context = self._context(request, await self._authenticator.actor(request.headers, request.query_params))
        return await super().run(request, context, root_value)

    async def render_graphql_ide(self, request):
        """Our own GraphiQL page, every file of it served by the gateway (Strawberry's loads them from a CDN)."""
        return graphiql.page()

    async def get_context(self, request, response) -> Context:  # the GraphiQL page's: it runs nothing
        return self._context(request, actor=None)

    async def on_ws_connect(self, context: Context):
        upgrade = context.request
        try:
            context.actor = await self._authenticator.actor_from_connection(
                context.connection_params or {}, upgrade.headers, upgrade.query_params)
        except (Unauthenticated, IssuerUnavailable) as error:
            raise ConnectionRejectionError({"message": str(error)}) from None
        return UNSET

    @staticmethod
    def _context(request: HTTPConnection, actor) -> Context:
        return Context(container=request.scope["state"]["container"], request=request, actor=actor)


def create_app(settings: Settings | None = None, **overrides) -> Starlette:
    """`overrides` replace single adapters (see `bootstrap`); the services are closed when the app stops."""
    container = bootstrap(settings or Settings(), **overrides)
    settings = container.settings
    issuer_client = httpx.AsyncClient(timeout=ISSUER_TIMEOUT_S)
    authenticator = create_authenticator(settings, issuer_client)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict]:
        try:
            yield {"container": container, "authenticator": authenticator}
        finally:
            await issuer_client.aclose()
            await container.aclose()

    graphql = GraphQLApp(settings, authenticator)
    middleware = [Middleware(BodyLimit, limit=settings.max_body_bytes)]
    if tracing_configured():
        middleware.insert(0, Middleware(observability.TracingMiddleware))
    return Starlette(
        routes=[  # /graphql first: no other path overlaps it, and Starlette tries each route in turn
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            *rest.routes,
            *(events.routes if settings.event_grid_webhook_key else []),
            *health.routes,
            *openapi.routes,
            *observability.routes,
            *(graphiql.routes if settings.graphiql else []),
        ],
        middleware=middleware,
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )

"""The gateway app factory: REST shims, /graphql, health checks, over one container of services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from strawberry.asgi import GraphQL

from fulfillment.bootstrap import bootstrap
from fulfillment.settings import Settings
from gateway import health, rest
from gateway.errors import exception_handlers
from gateway.graphql.context import Context
from gateway.graphql.schema import create_schema


class GraphQLApp(GraphQL):
    async def get_context(self, request, response) -> Context:
        return Context(container=request.state.container)


def create_app(settings: Settings | None = None, **overrides) -> Starlette:
    """The services are built when the app starts (lifespan) and closed when it stops."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict]:
        container = bootstrap(settings, **overrides)
        try:
            yield {"container": container}
        finally:
            await container.aclose()

    graphql = GraphQLApp(create_schema(settings.graphql_max_depth),
                         graphql_ide="graphiql" if settings.graphiql else None)
    return Starlette(
        routes=[
            *rest.routes,
            *health.routes,
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
        ],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )

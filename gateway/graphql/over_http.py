"""GraphQL over HTTP as its spec says (https://graphql.github.io/graphql-over-http/), on Strawberry's ASGI view.

- The answer is `application/graphql-response+json` to a client that asks for it, `application/json` to the
  others (legacy clients, `*/*` or no `Accept`), as the spec says.
- A request error (the document does not parse or validate — our limits included —, or the variables do not
  coerce) has no `data` entry: it is a 400 with `application/graphql-response+json`; a legacy client gets it
  with a 200, as the spec allows.
- Subscriptions stream over HTTP too, in the incremental-delivery multipart protocol that GraphiQL and Apollo
  use (`Accept: multipart/mixed; subscriptionSpec="1.0"`), besides the WebSocket protocols.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse
from strawberry.http.parse_content_type import parse_content_type
from strawberry.schema import BaseSchema
from strawberry.subscriptions import (
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)
from strawberry.types import ExecutionResult

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"


class GraphQLOverHTTP(GraphQL):
    def __init__(self, schema: BaseSchema, **options):
        super().__init__(schema, subscription_protocols=(
            GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL, MULTIPART_SUBSCRIPTION_PROTOCOL), **options)

    async def get_sub_response(self, request: Request) -> Response:
        """The per-request response Strawberry hands to `create_response` carries the negotiated media type."""
        sub_response = await super().get_sub_response(request)
        sub_response.media_type = response_media_type(request.headers.get("accept", ""))
        return sub_response

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        response = await super().process_result(request, result)
        if is_request_error(result):
            del response["data"]
        return response

    def create_response(self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
                        sub_response: Response) -> Response:
        response = super().create_response(response_data, sub_response)
        response.headers["content-type"] = sub_response.media_type
        if sub_response.media_type == GRAPHQL_RESPONSE_JSON and _without_data(response_data):
            response.status_code = 400  # the spec: a response without `data` is a 4xx
        return response


def response_media_type(accept: str) -> str:
    """`application/graphql-response+json` when the `Accept` header names it and prefers it at least as much as
    `application/json`; otherwise `application/json`, which is what wildcards and a missing header get."""
    quality = {}
    for media_range in filter(str.strip, accept.split(",")):
        media_type, params = parse_content_type(media_range)
        quality[media_type.lower()] = _quality(params.get("q", "1"))
    preferred = quality.get(GRAPHQL_RESPONSE_JSON, 0.0)
    return GRAPHQL_RESPONSE_JSON if preferred > 0 and preferred >= quality.get(JSON, 0.0) else JSON


def _quality(value: str) -> float:
    try:
        return min(max(float(value), 0.0), 1.0)
    except ValueError:
        return 0.0


def _without_data(response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse]) -> bool:
    return isinstance(response_data, dict) and "data" not in response_data


def is_request_error(result: ExecutionResult) -> bool:
    """Whether the request failed before execution (parse, validation, variable coercion): then there is no
    data, and no error has a `path`, which every field error has."""
    return result.data is None and bool(result.errors) and all(error.path is None for error in result.errors)

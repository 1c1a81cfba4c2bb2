"""GraphQL over HTTP as its spec says (https://graphql.github.io/graphql-over-http/), on Strawberry's ASGI view.

- The answer is `application/graphql-response+json` to a client that asks for it, `application/json` to the
  others (legacy clients, `*/*` or no `Accept`), as the spec says.
- A request error (the document does not parse or validate — our limits included —, or the variables do not
  coerce) has no `data` entry: it is a 400 with `application/graphql-response+json`; a legacy client gets it
  with a 200, as the spec allows.
- Subscriptions stream over HTTP too, in the incremental-delivery multipart protocol that GraphiQL and Apollo
  use (`Accept: multipart/mixed; subscriptionSpec="1.0"`), besides the WebSocket protocols.

Almost every request is a POST of `application/json` that asks for no stream: `GraphQLOverHTTP.run` answers
those itself, as Strawberry's `run` would, without the steps that only other requests need (see `_plain_post`).
"""

from __future__ import annotations

from functools import lru_cache

from starlette.requests import Request
from starlette.responses import Response
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.parse_content_type import parse_content_type
from strawberry.schema import BaseSchema
from strawberry.subscriptions import (
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"
PLAIN_JSON = frozenset({b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8"})


class GraphQLOverHTTP(GraphQL):
    def __init__(self, schema: BaseSchema, **options):
        super().__init__(schema, subscription_protocols=(
            GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL, MULTIPART_SUBSCRIPTION_PROTOCOL), **options)

    async def run(self, request, context=UNSET, root_value=UNSET):
        if _plain_post(request.scope) and not self.schema.config.enable_experimental_incremental_execution:
            return await self._run_plain_post(request, context, root_value)
        return await super().run(request, context, root_value)

    async def _run_plain_post(self, request: Request, context, root_value) -> Response:
        """Strawberry's `run` for a POST of a JSON object that asks for no stream, in the same steps and hooks:
        only what cannot apply is skipped (WebSocket, GraphiQL, method, content type and stream checks, and
        the tests for a streamed or batched result). Any other body (a batch, a `query` that is not a string,
        …) goes to Strawberry's `run`, which answers it as it always has."""
        root_value = await self.get_root_value(request) if root_value is UNSET else root_value
        sub_response = await self.get_sub_response(request)
        if context is UNSET:
            context = await self.get_context(request, response=sub_response)
        data = self.parse_json(await request.body())  # a body that is no JSON: the HTTPException of Strawberry's
        if not _plain_operation(data):
            return await super().run(request, context, root_value)
        request_data = GraphQLRequestData(
            query=data.get("query"), variables=data.get("variables"), operation_name=data.get("operationName"),
            extensions=data.get("extensions"), protocol="http")
        result = await self.execute_single(request=request, request_adapter=self.request_adapter_class(request),
                                           sub_response=sub_response, context=context, root_value=root_value,
                                           request_data=request_data)
        response_data = await self.process_result(request=request, result=result)
        if result.errors:
            self._handle_errors(result.errors, response_data)
        return self.create_response(response_data=response_data, sub_response=sub_response)

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


def _plain_post(scope) -> bool:
    """A POST whose `Content-Type` is plainly `application/json` and whose `Accept` names no multipart type
    (the only stream transport offered over POST, `multipart/mixed`, needs one)."""
    if scope.get("method") != "POST":  # a WebSocket has none
        return False
    content_types = [value.lower() for name, value in scope["headers"] if name == b"content-type"]
    accept = b",".join(value for name, value in scope["headers"] if name == b"accept")
    return len(content_types) == 1 and content_types[0] in PLAIN_JSON and b"multipart" not in accept.lower()


def _plain_operation(data: object) -> bool:
    """One operation whose fields have the types Strawberry accepts; Strawberry's `run` answers any other."""
    return (isinstance(data, dict) and isinstance(data.get("query"), str | None)
            and isinstance(data.get("variables"), dict | None) and isinstance(data.get("extensions"), dict | None))


@lru_cache(maxsize=256)
def response_media_type(accept: str) -> str:
    """`application/graphql-response+json` when the `Accept` header names it and prefers it at least as much as
    `application/json`; otherwise `application/json`, which is what wildcards and a missing header get. Cached:
    clients send the same few `Accept` headers, and parsing one takes microseconds."""
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

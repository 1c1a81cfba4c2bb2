"""The plain-POST path of `GraphQLOverHTTP` (gateway/graphql/over_http.py) against the installed Strawberry: it
replays `AsyncBaseHTTPView.run` for one kind of request, so these tests fail when that code changes (re-read it
and update the path, then the pins), when the path stops being taken, or when it takes a request it must not."""

from __future__ import annotations

import asyncio
import hashlib
import inspect

import httpx
import pytest
import strawberry
from strawberry.http.async_base_view import AsyncBaseHTTPView

from gateway.graphql.over_http import GraphQLOverHTTP, _plain_post

PINNED = {  # sha256 of the source, first 16 hex digits
    AsyncBaseHTTPView.run: "b278e647b7eee2e8",
    AsyncBaseHTTPView.parse_http_body: "6c7c673a13880c7f",
}


@pytest.mark.parametrize("function", PINNED, ids=lambda function: function.__qualname__)
def test_the_replayed_strawberry_code_has_not_changed(function):
    assert hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16] == PINNED[function]


def scope(method="POST", **headers: str) -> dict:
    return {"type": "http", "method": method,
            "headers": [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]}


@pytest.mark.parametrize("request_scope", [
    scope(content_type="application/json"),
    scope(content_type="Application/JSON; charset=utf-8", accept="application/graphql-response+json"),
])
def test_a_json_post_is_plain(request_scope):
    assert _plain_post(request_scope)


@pytest.mark.parametrize("request_scope", [
    scope("GET", content_type="application/json"),
    scope(content_type="application/json", accept='multipart/mixed; subscriptionSpec="1.0", application/json'),
    scope(content_type="multipart/form-data; boundary=x"),
    scope(content_type="application/json; charset=latin-1"),
    scope(),
    {"type": "websocket", "headers": []},
])
def test_anything_else_goes_to_strawberry(request_scope):
    assert not _plain_post(request_scope)


@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "world"


def post(view: GraphQLOverHTTP, body: bytes) -> httpx.Response:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=view), base_url="http://test") as client:
            return await client.post("/", content=body, headers={"content-type": "application/json"})

    return asyncio.run(send())


def test_a_plain_post_skips_strawberrys_body_parsing(monkeypatch):
    view = GraphQLOverHTTP(strawberry.Schema(query=Query))
    monkeypatch.setattr(AsyncBaseHTTPView, "parse_http_body", None)  # the plain path must not need it
    response = post(view, b'{"query": "{ hello }"}')
    assert (response.status_code, response.json()) == (200, {"data": {"hello": "world"}})


def test_a_batch_is_answered_by_strawberry():
    response = post(GraphQLOverHTTP(strawberry.Schema(query=Query)), b'[{"query": "{ hello }"}]')
    assert (response.status_code, response.text) == (400, "Batching is not enabled")

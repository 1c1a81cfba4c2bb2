"""Limits that hold for every route: the size of a request body, and what one GraphQL request may ask for."""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError, OperationType, ValidationRule
from graphql.language import (
    FieldNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Answers 413 for a request body over `limit` bytes before any route sees it, `/graphql` included: a
    declared `Content-Length` is checked first; a body sent without one (chunked) is counted as it arrives.
    The body is read here, then handed to the route as it came."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._too_large(scope, receive, send)
                return
        await self.app(scope, _replaying(bytes(body), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"error": "payload_too_large", "message": f"the body is larger than {self.limit} bytes"},
                                status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


def _replaying(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # what comes after the body: a disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def max_mutations(limit: int) -> type[ValidationRule]:
    """A validation rule: at most `limit` root fields in a mutation (fragments counted), so one request cannot
    place hundreds of orders."""

    class MaxMutations(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_args) -> None:
            if node.operation == OperationType.MUTATION:
                count = self._root_fields(node.selection_set, set())
                if count > limit:
                    self.report_error(GraphQLError(
                        f"a request may run at most {limit} mutations, this one asks for {count}", node))

        def _root_fields(self, selections: SelectionSetNode, seen: set[str]) -> int:
            count = 0
            for selection in selections.selections:
                if isinstance(selection, FieldNode):
                    count += 1
                elif isinstance(selection, InlineFragmentNode):
                    count += self._root_fields(selection.selection_set, seen)
                elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in seen:
                    seen.add(selection.name.value)
                    if fragment := self.context.get_fragment(selection.name.value):
                        count += self._root_fields(fragment.selection_set, seen)
            return count

    return MaxMutations


def longest_list(value: Any) -> int:
    """The length of the longest list anywhere in `value` (JSON: lists, objects, scalars)."""
    longest, pending = 0, [value]
    while pending:
        current = pending.pop()
        if isinstance(current, list):
            longest = max(longest, len(current))
            pending.extend(current)
        elif isinstance(current, dict):
            pending.extend(current.values())
    return longest

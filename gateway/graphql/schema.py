"""The GraphQL schema: queries, mutations and a subscription over the one order service.

Expected failures are typed results (`ValidationError`, `NotFoundError`, `InvalidStateError`); anything
unexpected is masked by `MaskUnexpectedErrors` and logged, never shown as a stack trace. A query's malformed
argument is a BAD_USER_INPUT error (REST's 400), one outside the caller's rights a FORBIDDEN error (REST's 403).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace
from datetime import datetime
from typing import Annotated

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors, MaxAliasesLimiter, QueryDepthLimiter
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

from fulfillment.domain import (
    CancellationTooLate,
    Forbidden,
    IdempotencyKeyReused,
    InvalidRequest,
    InvalidTransition,
    OrderNotFound,
)
from fulfillment.domain import FieldError as DomainFieldError
from fulfillment.settings import Settings
from gateway.auth import Unauthenticated
from gateway.graphql.documents import CheckedDocuments, DocumentCache
from gateway.graphql.types import DateTime, Order, OrderConnection, OrderEdge, OrderStatus, PageInfo, SagaState
from gateway.limits import max_mutations
from gateway.rest import idempotency_key as idempotency_key_of
from gateway.rest import parse_order_id

log = logging.getLogger("gateway.graphql")
QUERY_CACHE_SIZE = 512
MAX_VARIABLE_LIST = 500  # so 101 items still get the order rule's typed answer; coercing 500 takes ~40 ms


@strawberry.input
class OrderItemInput:
    product_id: str
    product_name: str
    quantity: int
    unit_price: float


@strawberry.input
class CreateOrderInput:
    customer_id: str
    items: list[OrderItemInput]


@strawberry.type
class FieldError:
    field: str
    message: str


@strawberry.type(description="The input broke a rule; nothing was stored.")
class ValidationError:
    errors: list[FieldError]


@strawberry.type
class OrderCreated:
    order: Order


@strawberry.type
class NotFoundError:
    id: strawberry.ID
    message: str


@strawberry.type(description="The caller may not act for this customer: a customer acts on its own orders only.")
class ForbiddenError:
    message: str


@strawberry.type(description="The idempotency key was sent before with a different order; nothing was stored.")
class IdempotencyKeyReusedError:
    idempotency_key: str
    message: str


@strawberry.type(description="The order's status does not allow this (e.g. it has already completed).")
class InvalidStateError:
    message: str


@strawberry.type(description="Accepted. An order no step has touched is cancelled at once; otherwise the saga stops "
                             "at its next step, compensates, and the order ends cancelled.")
class OrderCancellationRequested:
    order: Order


@strawberry.type(description="Too late: the shipment has begun, or the saga is compensating a failure.")
class CancellationTooLateError:
    message: str
    will_end_as: OrderStatus = strawberry.field(description="The status the order will end in instead.")


CreateOrderResult = Annotated[OrderCreated | ValidationError | ForbiddenError | IdempotencyKeyReusedError,
                              strawberry.union("CreateOrderResult")]
CancelOrderResult = Annotated[
    OrderCancellationRequested | CancellationTooLateError | NotFoundError | InvalidStateError | ValidationError
    | ForbiddenError,
    strawberry.union("CancelOrderResult"),
]


def _validation_error(error: InvalidRequest) -> ValidationError:
    return ValidationError(errors=[FieldError(field=e.field, message=e.message) for e in error.errors])


async def _load(info: Info, order_id: str, *, argument: str) -> Order | None:
    """The order of the id given as the query's `argument`."""
    try:
        order = await info.context.orders.load(parse_order_id(order_id))
    except InvalidRequest as error:
        raise bad_user_input([DomainFieldError(argument, e.message) for e in error.errors]) from None
    except Forbidden as error:
        raise forbidden(error) from None
    return Order.from_domain(order) if order else None


def forbidden(error: Forbidden) -> GraphQLError:
    """The GraphQL error for a query outside the caller's rights (mutations answer a typed `ForbiddenError`)."""
    return GraphQLError(str(error), extensions={"code": "FORBIDDEN"})


def bad_user_input(errors: list[DomainFieldError]) -> GraphQLError:
    """The GraphQL error for a query's malformed argument, where REST answers 400 (mutations answer a typed
    `ValidationError`): `extensions.code` BAD_USER_INPUT, and each argument at fault with why."""
    return GraphQLError(str(InvalidRequest(errors)), extensions={
        "code": "BAD_USER_INPUT", "errors": [{"field": e.field, "message": e.message} for e in errors]})


@strawberry.type
class Query:
    @strawberry.field(description="An order by id; null if there is none; a BAD_USER_INPUT error if `id` is not an order "
                                  "id.")
    async def order(self, info: Info, id: strawberry.ID) -> Order | None:
        return await _load(info, id, argument="id")

    @strawberry.field(description="A customer's orders, newest first.")
    async def orders_by_customer(self, info: Info, customer_id: str, first: int | None = None,
                                 after: str | None = None) -> OrderConnection:
        try:
            if first is not None and first < 1:
                raise InvalidRequest([DomainFieldError("first", f"must be 1 or more, got {first}")])
            page = await info.context.container.order_service.list_by_customer(
                customer_id, actor=info.context.caller, first=first, after=after)
        except InvalidRequest as error:
            raise bad_user_input(error.errors) from None
        except Forbidden as error:
            raise forbidden(error) from None
        return OrderConnection(
            edges=[OrderEdge(node=Order.from_domain(order), cursor=cursor)
                   for order, cursor in zip(page.orders, page.cursors, strict=True)],
            page_info=PageInfo(has_next_page=page.has_more, end_cursor=page.cursors[-1] if page.cursors else None),
        )

    @strawberry.field(description="The saga state of an order; null if there is no such order; a BAD_USER_INPUT "
                                  "error if `orderId` is not an order id.")
    async def saga_state(self, info: Info, order_id: strawberry.ID) -> SagaState | None:
        order = await _load(info, order_id, argument="orderId")
        return SagaState.from_domain(order.domain.saga) if order else None


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Places an order and starts its saga. The same `idempotencyKey` with the same "
                                     "input answers the order it made; with another input, IdempotencyKeyReusedError.")
    async def create_order(self, info: Info, input: CreateOrderInput,
                           idempotency_key: str | None = None) -> CreateOrderResult:
        payload = {
            "customerId": input.customer_id,
            "items": [{"productId": i.product_id, "productName": i.product_name, "quantity": i.quantity,
                       "unitPrice": i.unit_price} for i in input.items],
        }
        try:
            key = idempotency_key_of(idempotency_key, field="idempotencyKey")
            order = await info.context.container.order_service.place(
                payload, source="graphql", actor=info.context.caller, idempotency_key=key)
        except InvalidRequest as error:
            return _validation_error(error)
        except Forbidden as error:
            return ForbiddenError(message=str(error))
        except IdempotencyKeyReused as error:
            return IdempotencyKeyReusedError(idempotency_key=error.key, message=str(error))
        return OrderCreated(order=Order.from_domain(order))

    @strawberry.mutation(description="Cancels an order that has not finished: its compensations run.")
    async def cancel_order(self, info: Info, id: strawberry.ID) -> CancelOrderResult:
        try:
            order = await info.context.container.order_service.cancel(parse_order_id(id), actor=info.context.caller)
        except InvalidRequest as error:
            return _validation_error(error)
        except Forbidden as error:
            return ForbiddenError(message=str(error))
        except OrderNotFound as error:
            return NotFoundError(id=id, message=str(error))
        except CancellationTooLate as error:
            return CancellationTooLateError(message=str(error), will_end_as=error.will_end_as)
        except InvalidTransition as error:
            return InvalidStateError(message=str(error))
        return OrderCancellationRequested(order=Order.from_domain(order))


@strawberry.type
class Subscription:
    @strawberry.subscription(description="The order's current status, then each change of its status, once and in "
                                         "order, until it is terminal. `status` is the status of that change; the "
                                         "other fields are the order as read when it was sent.")
    async def order_status_changed(self, info: Info, id: strawberry.ID) -> AsyncGenerator[Order, None]:
        changes = info.context.container.order_service.status_changes(parse_order_id(id), actor=info.context.caller)
        try:
            async with aclosing(changes):
                async for change, order in changes:
                    yield replace(Order.from_domain(order), status=change.status)
        except Forbidden as error:
            raise forbidden(error) from None


def create_schema(settings: Settings) -> strawberry.Schema:
    """The schema with the request limits of the settings: depth, aliases, tokens and mutations per request."""
    documents = DocumentCache(
        max_tokens=settings.graphql_max_tokens, maxsize=QUERY_CACHE_SIZE,
        rules=[*QueryDepthLimiter(max_depth=settings.graphql_max_depth).validation_rules,
               *MaxAliasesLimiter(max_alias_count=settings.graphql_max_aliases).validation_rules,
               max_mutations(settings.graphql_max_mutations)])
    return _Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map={datetime: DateTime}),
        extensions=[
            lambda: CheckedDocuments(documents, max_list=MAX_VARIABLE_LIST),
            MaskUnexpectedErrors,
        ],
    )


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context=None) -> None:
        """Unexpected errors are logged with their traceback (Strawberry's way); a client's mistake (a bad
        argument, a refused request, a limit) is one line, with no traceback: nothing on our side to fix."""
        unexpected = [error for error in errors if _is_unexpected(error)]
        super().process_errors(unexpected, execution_context)
        for error in errors:
            if not _is_unexpected(error):
                log.info("graphql request refused: %s", error.message,
                         extra={"path": error.path, "code": (error.extensions or {}).get("code")})


class MaskUnexpectedErrors(MaskErrors):
    """Strawberry's `MaskErrors` for the unexpected errors only, looking for a result's errors with `getattr`: its
    own test, `isinstance` against a runtime-checkable Protocol, costs every request some 25 µs on Python 3.11."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=_is_unexpected)

    def _process_result(self, result: object) -> None:
        if errors := getattr(result, "errors", None):
            result.errors = self._process_errors(errors)  # type: ignore[attr-defined]


def _is_unexpected(error) -> bool:
    """GraphQL's own errors and those the client caused (bad cursor, unknown order) keep their message."""
    original = error.original_error
    while isinstance(original, GraphQLError):  # GraphQL's own, e.g. a variable of the wrong type
        original = original.original_error
    return original is not None and not isinstance(original, InvalidRequest | OrderNotFound | Unauthenticated)

"""The stored form of an order (a JSON document), shared by the SQLite and Cosmos DB order stores.

Amounts are strings so that they round-trip exactly; timestamps are ISO-8601 UTC with microseconds.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from fulfillment.domain import (
    Compensation,
    CompensationFailure,
    Order,
    OrderItem,
    OrderStatus,
    SagaClaim,
    SagaState,
    StatusChange,
    Step,
)


def to_document(order: Order) -> dict[str, Any]:
    claim = order.claim
    return {
        "id": order.id,
        "customerId": order.customer_id,
        "status": order.status.value,
        "createdAt": order.created_at.isoformat(),
        "completedAt": _time(order.completed_at),
        "failureReason": order.failure_reason,
        "cancelRequested": order.cancel_requested,
        "flowRunId": order.flow_run_id,
        "traceParent": order.trace_parent,
        "items": [
            {"productId": i.product_id, "productName": i.product_name, "quantity": i.quantity,
             "unitPrice": str(i.unit_price)}
            for i in order.items
        ],
        "saga": _saga_document(order.saga),
        "claim": {"token": claim.token, "holder": claim.holder, "expiresAt": _time(claim.expires_at)} if claim else None,
        "earlierAttempts": [_saga_document(saga) for saga in order.earlier_attempts],
        "statusHistory": [{"status": c.status.value, "at": c.at.isoformat()} for c in order.status_history],
    }


def from_document(document: dict[str, Any]) -> Order:
    order_id = document["id"]
    claim = document.get("claim")
    return Order(
        id=order_id,
        customer_id=document["customerId"],
        items=tuple(
            OrderItem(product_id=i["productId"], product_name=i["productName"], quantity=i["quantity"],
                      unit_price=Decimal(i["unitPrice"]))
            for i in document["items"]
        ),
        status=OrderStatus(document["status"]),
        created_at=datetime.fromisoformat(document["createdAt"]),
        completed_at=_parsed(document["completedAt"]),
        failure_reason=document["failureReason"],
        cancel_requested=document["cancelRequested"],
        flow_run_id=document["flowRunId"],
        trace_parent=document.get("traceParent"),
        saga=_saga(order_id, document["saga"]),
        claim=SagaClaim(token=claim["token"], holder=claim["holder"], expires_at=datetime.fromisoformat(
            claim["expiresAt"])) if claim else None,
        earlier_attempts=[_saga(order_id, saga) for saga in document.get("earlierAttempts", [])],
        status_history=[StatusChange(OrderStatus(c["status"]), datetime.fromisoformat(c["at"]))
                        for c in document.get("statusHistory", [])],  # none before orders kept it: the status
    )


def _saga_document(saga: SagaState) -> dict[str, Any]:
    return {
        "attempt": saga.attempt,
        "startedAt": _time(saga.started_at),
        "completedSteps": [s.value for s in saga.completed_steps],
        "compensatedSteps": [c.value for c in saga.compensated_steps],
        "inFlight": saga.in_flight.value if saga.in_flight else None,
        "reservationId": saga.reservation_id,
        "transactionId": saga.transaction_id,
        "trackingId": saga.tracking_id,
        "failedStep": saga.failed_step,
        "failureReason": saga.failure_reason,
        "compensationFailures": [{"step": f.step, "error": f.error} for f in saga.compensation_failures],
    }


def _saga(order_id: str, saga: dict[str, Any]) -> SagaState:
    return SagaState(
        order_id=order_id,
        attempt=saga.get("attempt", 1),
        started_at=_parsed(saga.get("startedAt")),
        completed_steps=[Step(s) for s in saga["completedSteps"]],
        compensated_steps=[Compensation(c) for c in saga["compensatedSteps"]],
        in_flight=Step(saga["inFlight"]) if saga.get("inFlight") else None,
        reservation_id=saga["reservationId"],
        transaction_id=saga["transactionId"],
        tracking_id=saga["trackingId"],
        failed_step=saga["failedStep"],
        failure_reason=saga["failureReason"],
        compensation_failures=[CompensationFailure(step=f["step"], error=f["error"])
                               for f in saga["compensationFailures"]],
    )


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _parsed(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None

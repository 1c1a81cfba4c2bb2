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
    SagaState,
    Step,
)


def to_document(order: Order) -> dict[str, Any]:
    saga = order.saga
    return {
        "id": order.id,
        "customerId": order.customer_id,
        "status": order.status.value,
        "createdAt": order.created_at.isoformat(),
        "completedAt": order.completed_at.isoformat() if order.completed_at else None,
        "failureReason": order.failure_reason,
        "cancelRequested": order.cancel_requested,
        "flowRunId": order.flow_run_id,
        "traceParent": order.trace_parent,
        "items": [
            {"productId": i.product_id, "productName": i.product_name, "quantity": i.quantity,
             "unitPrice": str(i.unit_price)}
            for i in order.items
        ],
        "saga": {
            "startedAt": saga.started_at.isoformat() if saga.started_at else None,
            "completedSteps": [s.value for s in saga.completed_steps],
            "compensatedSteps": [c.value for c in saga.compensated_steps],
            "reservationId": saga.reservation_id,
            "transactionId": saga.transaction_id,
            "trackingId": saga.tracking_id,
            "failedStep": saga.failed_step,
            "failureReason": saga.failure_reason,
            "compensationFailures": [{"step": f.step, "error": f.error} for f in saga.compensation_failures],
        },
    }


def from_document(document: dict[str, Any]) -> Order:
    order_id = document["id"]
    saga = document["saga"]
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
        completed_at=datetime.fromisoformat(document["completedAt"]) if document["completedAt"] else None,
        failure_reason=document["failureReason"],
        cancel_requested=document["cancelRequested"],
        flow_run_id=document["flowRunId"],
        trace_parent=document.get("traceParent"),
        saga=SagaState(
            order_id=order_id,
            started_at=datetime.fromisoformat(saga["startedAt"]) if saga.get("startedAt") else None,
            completed_steps=[Step(s) for s in saga["completedSteps"]],
            compensated_steps=[Compensation(c) for c in saga["compensatedSteps"]],
            reservation_id=saga["reservationId"],
            transaction_id=saga["transactionId"],
            tracking_id=saga["trackingId"],
            failed_step=saga["failedStep"],
            failure_reason=saga["failureReason"],
            compensation_failures=[CompensationFailure(step=f["step"], error=f["error"])
                                   for f in saga["compensationFailures"]],
        ),
    )

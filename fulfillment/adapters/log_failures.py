"""`FailureAnnouncer` for the embedded default: a structured WARNING line per failed order."""

from __future__ import annotations

import logging

from fulfillment.domain import Order

log = logging.getLogger("fulfillment.failures")


class LogFailureAnnouncer:
    async def order_failed(self, order: Order) -> None:
        saga = order.saga
        what = "order failed" if order.status.is_terminal else "order needs manual intervention"
        log.warning(what, extra={
            "order_id": order.id, "customer_id": order.customer_id, "failed_step": saga.failed_step,
            "reason": order.failure_reason or saga.failure_reason,
            "compensated_steps": [str(c) for c in saga.compensated_steps],
            "manual_intervention_required": [f.step for f in saga.compensation_failures],
        })

    async def aclose(self) -> None:
        pass

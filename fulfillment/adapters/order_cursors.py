"""The cursors of a customer's order list, the same for every order store: both list newest first by
(createdAt, id), and a cursor is the (createdAt, id) of an order, so the page it is passed to starts just
after that order (keyset paging). Every order of a page has one, not only the last, and a cursor stays valid
while orders are added or change: it names a place in the order, not an offset or a server-side state.
"""

from __future__ import annotations

import base64
import binascii
import json

from fulfillment.domain import FieldError, InvalidRequest, Order
from fulfillment.service.requests import unicode_problem


def cursor_of(order: Order) -> str:
    return base64.urlsafe_b64encode(json.dumps([order.created_at.isoformat(), order.id]).encode()).decode()


def position_of(cursor: str) -> tuple[str, str]:
    """The (createdAt, id) a cursor names, as the stores hold them; `InvalidRequest` for anything else."""
    try:
        created_at, order_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError, binascii.Error, RecursionError):
        created_at = order_id = None
    if not (isinstance(created_at, str) and isinstance(order_id, str)) or unicode_problem(created_at + order_id):
        raise InvalidRequest([FieldError("after", "is not a cursor returned by this API")])
    return created_at, order_id

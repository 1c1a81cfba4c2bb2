"""Leased work queues in Cosmos DB: documents of one `type` that carry a lease in one field.

Used by the saga outbox (`sagaDispatch` on an order) and the inventory-event inbox (`applyDispatch` on an
event). The lease is `{availableAt, claimedBy, attempts, lastError}`; a document is due when `availableAt` has
passed, and claiming it pushes `availableAt` to the end of the lease, so a dead worker's documents become due
again by themselves. Removing the field takes a document out of the queue for good.

Claims: a worker queries the due documents, then claims each with an ETag-conditional replace. A 412 means
another worker, or any other writer, wrote the document since the query: it is left for the next poll, so two
workers never hold one document.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from azure.core import MatchConditions
from azure.cosmos.aio import ContainerProxy
from azure.cosmos.exceptions import CosmosAccessConditionFailedError, CosmosResourceNotFoundError

from fulfillment.adapters.cosmos_common import Document, Revision


class LeasedDocuments:
    def __init__(self, document_type: str, field: str):
        self._type, self._field = document_type, field
        self._due = (f"SELECT TOP @limit * FROM c WHERE c.type = @type AND c.{field}.availableAt <= @now"
                     f" ORDER BY c.{field}.availableAt")

    def enqueued(self, document: Document) -> Document:
        """`document` with a lease that is due now."""
        lease = {"availableAt": time.time(), "claimedBy": None, "attempts": 0, "lastError": None}
        return {**document, self._field: lease}

    def attempts(self, document: Document) -> int:
        """Claims of the document so far."""
        return document[self._field]["attempts"]

    async def claim(self, container: ContainerProxy, worker_id: str, limit: int, lease: timedelta) -> list[Document]:
        """The due documents that `worker_id` now holds, as claimed."""
        now = time.time()
        due = container.query_items(self._due, parameters=[{"name": "@limit", "value": limit},
                                                           {"name": "@type", "value": self._type},
                                                           {"name": "@now", "value": now}])
        claims = [self._claim_one(container, document, worker_id, now + lease.total_seconds())
                  async for document in due]
        return [claimed for claimed in await asyncio.gather(*claims) if claimed is not None]

    def renewal(self, worker_id: str, lease: timedelta) -> Revision:
        return self._holders_change(worker_id, availableAt=time.time() + lease.total_seconds())

    def release(self, worker_id: str, error: str, retry_in: timedelta) -> Revision:
        return self._holders_change(worker_id, claimedBy=None, availableAt=time.time() + retry_in.total_seconds(),
                                    lastError=error)

    def finished(self, document: Document, **marks: Any) -> Document | None:
        """The document out of the queue for good, with `marks` added; None if it was out already."""
        if self._field not in document:
            return None
        return {**{name: value for name, value in document.items() if name != self._field}, **marks}

    def _holders_change(self, worker_id: str, **changes: Any) -> Revision:
        """A revision that changes the lease if `worker_id` still holds it."""
        def revise(document: Document) -> Document | None:
            lease = document.get(self._field)
            if lease is None or lease["claimedBy"] != worker_id:
                return None
            return {**document, self._field: {**lease, **changes}}

        return revise

    async def _claim_one(self, container: ContainerProxy, document: Document, worker_id: str,
                         until: float) -> Document | None:
        lease = document[self._field]
        claimed = {**document, self._field: {**lease, "claimedBy": worker_id, "availableAt": until,
                                             "attempts": lease["attempts"] + 1}}
        try:
            return await container.replace_item(document["id"], claimed, etag=document["_etag"],
                                                match_condition=MatchConditions.IfNotModified)
        except (CosmosAccessConditionFailedError, CosmosResourceNotFoundError):
            return None  # written since the query: claimed by another worker, or due again at the next poll

"""What the Cosmos DB adapters share: where the container is, opening it on first use, ETag-conditional
rewrites and the translation of SDK errors into the domain's. docs/cosmos.md explains the container's layout.

Every adapter keeps its documents in the one container, partition key `/id`, told apart by their `type`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.cosmos import PartitionKey
from azure.cosmos.aio import ContainerProxy, CosmosClient
from azure.cosmos.exceptions import CosmosAccessConditionFailedError, CosmosResourceExistsError
from azure.identity.aio import DefaultAzureCredential

from fulfillment.domain import ConcurrencyConflict, StoreUnavailable
from fulfillment.settings import Settings

Document = dict[str, Any]
Revision = Callable[[Document], Document | None]
T = TypeVar("T")

PARTITION_KEY = "/id"
MAX_WRITE_CONFLICTS = 50
# The SDK retries a 429 after the server's `x-ms-retry-after-ms`, up to this many times and this long in all.
THROTTLE_RETRIES = 9
THROTTLE_MAX_WAIT_SECONDS = 30
INDEXING_POLICY = {
    "indexingMode": "consistent",
    "includedPaths": [{"path": "/*"}],
    # No query looks inside these; leaving them out of the index makes every write cheaper.
    "excludedPaths": [{"path": "/items/*"}, {"path": "/saga/*"}, {"path": "/statusHistory/*"},
                      {"path": '/"_etag"/?'}],
    # A customer's orders, newest first (cosmos_orders.LIST_BY_CUSTOMER).
    "compositeIndexes": [[{"path": "/createdAt", "order": "descending"}, {"path": "/id", "order": "descending"}]],
}


@dataclass(frozen=True)
class CosmosTarget:
    """Where the container is and how to reach it."""

    endpoint: str
    key: str | None  # None: Microsoft Entra ID through DefaultAzureCredential (managed identity)
    database: str
    container: str
    create_if_missing: bool
    verify_tls: bool


def cosmos_target(settings: Settings) -> CosmosTarget:
    """The container the settings select: a connection string, else an account endpoint with managed identity."""
    if settings.cosmos_connection_string:
        endpoint, key = _endpoint_and_key(settings.cosmos_connection_string)
    elif settings.cosmos_endpoint:
        endpoint, key = settings.cosmos_endpoint, None
    else:
        raise ValueError("Cosmos DB needs OrderProcessing__CosmosConnectionString or OrderProcessing__CosmosEndpoint")
    return CosmosTarget(
        endpoint=endpoint, key=key, database=settings.cosmos_database_name,
        container=settings.cosmos_container_name, create_if_missing=settings.cosmos_create_if_missing,
        verify_tls=settings.cosmos_verify_tls)


def hashed_id(prefix: str, key: str) -> str:
    """A Cosmos DB id for any key: ids cannot hold `/`, `\\`, `?` or `#`, and their length is limited."""
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()}"


class ContainerOnFirstUse:
    """The target's container, opened on first use (the database and container are created if missing); a
    failure to open it is raised to that use, and the next one tries again. `close` lets the next use reopen."""

    def __init__(self, target: CosmosTarget):
        self._target = target
        self._container: ContainerProxy | None = None
        self._opening = asyncio.Lock()
        self._resources = AsyncExitStack()

    async def ready(self) -> ContainerProxy:
        if self._container is None:
            async with self._opening:
                if self._container is None:
                    self._container = await self._open()
        return self._container

    async def close(self) -> None:
        self._container = None
        await self._resources.aclose()

    async def _open(self) -> ContainerProxy:
        target = self._target
        async with AsyncExitStack() as opening:
            credential = target.key or await opening.enter_async_context(DefaultAzureCredential())
            client = CosmosClient(target.endpoint, credential, **_client_options(target))
            # Closed even if entering fails: the SDK's __aenter__ then leaves its HTTP session open.
            opening.push_async_callback(client.close)
            await client.__aenter__()
            container = await _container(client, target)
            self._resources = opening.pop_all()
        return container


async def rewrite(container: ContainerProxy, read: Callable[[], Awaitable[Document]], revise: Revision, *,
                  name: str) -> Document:
    """Replaces the document `read` returns by `revise(document)` unless another writer got there first, in
    which case it re-reads and revises again. `revise` returns None to leave the document as it is."""
    for _ in range(MAX_WRITE_CONFLICTS):
        document = await read()
        revised = revise(document)
        if revised is None:
            return document
        try:
            return await container.replace_item(document["id"], revised, etag=document["_etag"],
                                                match_condition=MatchConditions.IfNotModified)
        except CosmosAccessConditionFailedError:
            continue
    raise ConcurrencyConflict(f"{name} kept changing under {MAX_WRITE_CONFLICTS} attempts to write it")


@contextmanager
def translated_errors(action: str) -> Iterator[None]:
    """SDK errors that remain once 404s, 409s and 412s were handled where they mean something: a conflict
    nobody expected, or the store being unavailable (429 after the SDK's retries, 5xx, auth, network)."""
    try:
        yield
    except (CosmosResourceExistsError, CosmosAccessConditionFailedError) as error:
        raise ConcurrencyConflict(f"Cosmos DB could not {action}: {_summary(error)}") from error
    except AzureError as error:
        raise StoreUnavailable(f"Cosmos DB could not {action}: {_summary(error)}") from error


async def _container(client: CosmosClient, target: CosmosTarget) -> ContainerProxy:
    if target.create_if_missing:
        database = await _if_not_exists(lambda: client.create_database_if_not_exists(target.database))
        container, properties = await _if_not_exists(lambda: database.create_container_if_not_exists(
            target.container, partition_key=PartitionKey(PARTITION_KEY), indexing_policy=INDEXING_POLICY,
            return_properties=True))
    else:
        container = client.get_database_client(target.database).get_container_client(target.container)
        properties = await container.read()  # a missing container fails here, not later as "no such document"
    paths = properties["partitionKey"]["paths"]
    if paths != [PARTITION_KEY]:  # every read by id would answer "not found"
        raise StoreUnavailable(f"Cosmos DB container {target.database}/{target.container} is partitioned by "
                               f"{paths}, not [{PARTITION_KEY!r}] (docs/cosmos.md)")
    return container


async def _if_not_exists(create: Callable[[], Awaitable[T]]) -> T:
    try:
        return await create()
    except CosmosResourceExistsError:  # another process created it between the SDK's read and its create
        return await create()


def _client_options(target: CosmosTarget) -> dict[str, Any]:
    return {
        "connection_verify": target.verify_tls,
        # An emulator on plain http:// advertises an https:// address; following it fails the first call.
        "enable_endpoint_discovery": not target.endpoint.startswith("http://"),
        "retry_throttle_total": THROTTLE_RETRIES,
        "retry_throttle_backoff_max": THROTTLE_MAX_WAIT_SECONDS,
    }


def _endpoint_and_key(connection_string: str) -> tuple[str, str]:
    parts = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    if not parts.get("AccountEndpoint") or not parts.get("AccountKey"):
        raise ValueError("the Cosmos DB connection string needs AccountEndpoint=...;AccountKey=...")
    return parts["AccountEndpoint"], parts["AccountKey"]


def _summary(error: AzureError) -> str:
    status = getattr(error, "status_code", None)
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{status} {first_line}" if status else first_line

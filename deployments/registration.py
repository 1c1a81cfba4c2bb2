"""Registers the work pool and the deployments declared in `prefect.yaml` with the Prefect API, idempotently:
a pool or deployment that exists is kept as the operator left it (a paused one stays paused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, WorkPool
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.filesystems import LocalFileSystem
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.settings import PREFECT_HOME

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"
RESULT_STORAGE = "order-saga-results"
WORK_POOL_TYPE = "order-saga-in-process"
WORK_POOL_DESCRIPTION = ("Saga and inventory-event runs, executed in-process by `order-saga` executors "
                         "(`python -m deployments.worker`, or `order-saga worker` for one more).")


async def result_storage_block() -> str:
    """Saves the local result storage block the flows use, and returns its slug for the settings."""
    await LocalFileSystem(basepath=str(PREFECT_HOME.value() / "storage")).asave(RESULT_STORAGE, overwrite=True)
    return f"local-file-system/{RESULT_STORAGE}"


async def ensure_work_pool(client: PrefectClient, name: str) -> WorkPool:
    """The work pool the executors serve, created if missing (never changed if it exists)."""
    try:
        return await client.read_work_pool(name)
    except ObjectNotFound:
        pass
    try:
        return await client.create_work_pool(WorkPoolCreate(name=name, type=WORK_POOL_TYPE,
                                                            description=WORK_POOL_DESCRIPTION))
    except ObjectAlreadyExists:  # another executor created it first
        return await client.read_work_pool(name)


async def register_deployments(client: PrefectClient, work_pool: str,
                               path: Path = PREFECT_YAML) -> dict[str, tuple[UUID, Flow]]:
    """Creates or updates each declared deployment in `work_pool`; returns its id and flow by deployment name.

    What an operator sets in the UI is kept: an executor (re)starting must not resume a paused deployment or
    lift its concurrency limit."""
    registered = {}
    for spec in yaml.safe_load(path.read_text())["deployments"]:
        flow = load_flow_from_entrypoint(str(path.parent / spec["entrypoint"]))
        deployment = await flow.ato_deployment(name=spec["name"], description=spec.get("description"),
                                               tags=spec.get("tags"), work_pool_name=work_pool,
                                               **await _operator_settings(client, f"{flow.name}/{spec['name']}"))
        registered[spec["name"]] = (await deployment.apply(), flow)
    return registered


async def _operator_settings(client: PrefectClient, full_name: str) -> dict[str, Any]:
    try:
        existing = await client.read_deployment_by_name(full_name)
    except ObjectNotFound:
        return {"paused": False}
    limit, options = existing.global_concurrency_limit, existing.concurrency_options
    if limit is None:
        return {"paused": bool(existing.paused)}
    config = ConcurrencyLimitConfig(limit=limit.limit, **({
        "collision_strategy": options.collision_strategy, "grace_period_seconds": options.grace_period_seconds,
    } if options else {}))
    return {"paused": bool(existing.paused), "concurrency_limit": config}

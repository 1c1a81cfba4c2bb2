"""Registers the deployments declared in `prefect.yaml` with the Prefect API."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import yaml
from prefect.filesystems import LocalFileSystem
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.settings import PREFECT_HOME

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


RESULT_STORAGE = "order-saga-results"


async def result_storage_block() -> str:
    """Saves the local result storage block the flows use, and returns its slug for the settings."""
    await LocalFileSystem(basepath=str(PREFECT_HOME.value() / "storage")).asave(RESULT_STORAGE, overwrite=True)
    return f"local-file-system/{RESULT_STORAGE}"


async def register_deployments(path: Path = PREFECT_YAML) -> dict[str, tuple[UUID, Flow]]:
    """Creates or updates each declared deployment; returns its id and flow by deployment name.

    They are registered without a work pool: the worker executes their runs itself (see worker.py).
    """
    registered = {}
    for spec in yaml.safe_load(path.read_text())["deployments"]:
        flow = load_flow_from_entrypoint(str(path.parent / spec["entrypoint"]))
        deployment = await flow.ato_deployment(name=spec["name"], description=spec.get("description"),
                                               tags=spec.get("tags"))
        registered[spec["name"]] = (await deployment.apply(), flow)
    return registered

"""Registers the deployments declared in `prefect.yaml` with the Prefect API."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import yaml
from prefect.flows import load_flow_from_entrypoint

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


async def register_deployments(path: Path = PREFECT_YAML) -> list[UUID]:
    """Creates or updates each declared deployment; returns their ids in the file's order.

    They are registered without a work pool: the saga worker executes their runs itself (see worker.py).
    """
    declared = yaml.safe_load(path.read_text())["deployments"]
    ids = []
    for spec in declared:
        flow = load_flow_from_entrypoint(str(path.parent / spec["entrypoint"]))
        deployment = await flow.ato_deployment(name=spec["name"], description=spec.get("description"),
                                               tags=spec.get("tags"))
        ids.append(await deployment.apply())
    return ids

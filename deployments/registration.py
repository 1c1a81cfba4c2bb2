"""Registers the deployments declared in `prefect.yaml` with the Prefect API."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import yaml
from prefect.flows import Flow, load_flow_from_entrypoint

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


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

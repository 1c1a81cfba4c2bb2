"""`SagaMonitor` over the Prefect REST API with plain httpx: the gateway never imports Prefect itself."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

from fulfillment.ports import FlowRunInfo

MAX_RUNS_PER_CALL = 200


class PrefectMonitor:
    def __init__(self, api_url: str, ui_url: str, *, timeout: float = 2.0):
        self._api = httpx.AsyncClient(base_url=api_url.rstrip("/") + "/", timeout=timeout)
        self._ui_url = ui_url.rstrip("/")

    async def flow_runs(self, flow_run_ids: Sequence[str]) -> list[FlowRunInfo | None]:
        """One `flow_runs/filter` call per `MAX_RUNS_PER_CALL` runs (Prefect's default page limit)."""
        chunks = [flow_run_ids[i:i + MAX_RUNS_PER_CALL] for i in range(0, len(flow_run_ids), MAX_RUNS_PER_CALL)]
        return [run for found in await asyncio.gather(*map(self._flow_runs, chunks)) for run in found]

    async def _flow_runs(self, flow_run_ids: Sequence[str]) -> list[FlowRunInfo | None]:
        try:
            response = await self._api.post("flow_runs/filter", json={
                "flow_runs": {"id": {"any_": list(flow_run_ids)}}, "limit": len(flow_run_ids)})
            response.raise_for_status()
            states = {run["id"]: (run.get("state") or {}).get("name") or "UNKNOWN" for run in response.json()}
        except (httpx.HTTPError, ValueError, KeyError, TypeError):  # Prefect down or answering nonsense:
            states = dict.fromkeys(flow_run_ids, "UNKNOWN")        # the runs are still linked
        return [FlowRunInfo(id=run_id, state=states[run_id], url=self.url(run_id)) if run_id in states else None
                for run_id in flow_run_ids]

    def url(self, flow_run_id: str) -> str:
        return f"{self._ui_url}/runs/flow-run/{flow_run_id}"

    async def is_reachable(self) -> bool:
        try:
            return (await self._api.get("health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        await self._api.aclose()

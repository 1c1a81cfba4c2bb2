"""`SagaMonitor` over the Prefect REST API with plain httpx: the gateway never imports Prefect itself."""

from __future__ import annotations

import httpx

from fulfillment.ports import FlowRunInfo


class PrefectMonitor:
    def __init__(self, api_url: str, ui_url: str, *, timeout: float = 2.0):
        self._api = httpx.AsyncClient(base_url=api_url.rstrip("/") + "/", timeout=timeout)
        self._ui_url = ui_url.rstrip("/")

    async def flow_run(self, flow_run_id: str) -> FlowRunInfo | None:
        try:
            response = await self._api.get(f"flow_runs/{flow_run_id}")
            if response.status_code == 404:
                return None
            response.raise_for_status()
            state = (response.json().get("state") or {}).get("name") or "UNKNOWN"
        except (httpx.HTTPError, ValueError):  # Prefect down or answering nonsense: the run is still linked
            state = "UNKNOWN"
        return FlowRunInfo(id=flow_run_id, state=state, url=self.url(flow_run_id))

    def url(self, flow_run_id: str) -> str:
        return f"{self._ui_url}/runs/flow-run/{flow_run_id}"

    async def is_reachable(self) -> bool:
        try:
            return (await self._api.get("health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        await self._api.aclose()

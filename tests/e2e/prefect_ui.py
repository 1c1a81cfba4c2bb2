"""The Prefect UI's buttons, sent to the Prefect API exactly as the UI bundled with the pinned Prefect sends
them (read from `prefect/server/ui*/assets`): same state types, names, messages and `force` flags."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx


@dataclass
class PrefectUI:
    api: str  # PREFECT_API_URL

    def retry(self, flow_run_id: str, *, ui_v2: bool = False) -> dict:
        """Retry on a finished run: the classic UI proposes AwaitingRetry without force, the v2 UI with it."""
        return self._set_state(flow_run_id, {"type": "SCHEDULED", "name": "AwaitingRetry",
                                             "message": "Retry from the UI"}, force=ui_v2)

    def cancel(self, flow_run_id: str) -> dict:
        return self._set_state(flow_run_id, {"type": "CANCELLING", "name": "Cancelling"}, force=True)

    def quick_run(self, deployment: str, parameters: dict) -> dict:
        """Quick run / Custom run of a deployment ("order-saga/order-saga")."""
        deployment_id = self._get(f"deployments/name/{deployment}")["id"]
        response = httpx.post(f"{self.api}/deployments/{deployment_id}/create_flow_run",
                              json={"parameters": parameters, "state": {"type": "SCHEDULED"}}, timeout=10)
        response.raise_for_status()
        return response.json()

    def pause_pool(self, pool: str, paused: bool = True) -> None:
        httpx.patch(f"{self.api}/work_pools/{pool}", json={"is_paused": paused}, timeout=10).raise_for_status()

    def flow_run(self, flow_run_id: str) -> dict:
        return self._get(f"flow_runs/{flow_run_id}")

    def wait_for_state(self, flow_run_id: str, *types: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.flow_run(flow_run_id)
            if run["state"] and run["state"]["type"] in types:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {flow_run_id} is {run['state']}, not one of {types}")
            time.sleep(0.2)

    def _get(self, path: str) -> dict:
        response = httpx.get(f"{self.api}/{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def _set_state(self, flow_run_id: str, state: dict, *, force: bool) -> dict:
        response = httpx.post(f"{self.api}/flow_runs/{flow_run_id}/set_state",
                              json={"state": state, "force": force}, timeout=10)
        response.raise_for_status()
        return response.json()

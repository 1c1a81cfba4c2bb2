"""Liveness and readiness."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.errors import services


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Ready when the order store answers and the Prefect API is reachable."""
    container = services(request)
    checks = {"store": "ok", "prefect": "ok"}
    try:
        backlog = await container.outbox.pending_count()
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        checks["store"], backlog = f"unavailable: {error}", None
    if not await container.monitor.is_reachable():
        checks["prefect"] = "unreachable"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks, "sagaBacklog": backlog},
                        status_code=200 if ready else 503)


routes = [Route("/healthz", healthz), Route("/readyz", readyz)]

"""The limit of the gateway legs: a bare Starlette JSON route on the same uvicorn settings as the gateway
(`python -m benchmarks.bare_app PORT`), or on uvicorn's pure-Python HTTP parser and event loop
(`python -m benchmarks.bare_app PORT pure`: h11 and asyncio, the gateway's settings before uvloop and httptools
were dependencies, to compare with the runs of that time)."""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def order(request):
    return JSONResponse({"id": request.path_params["id"], "status": "completed", "totalAmount": 149.93})


app = Starlette(routes=[Route("/api/orders/{id}", order)])

if __name__ == "__main__":
    pure = {"http": "h11", "loop": "asyncio"} if sys.argv[2:] == ["pure"] else {}
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False, **pure)

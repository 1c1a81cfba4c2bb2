"""The limit of the gateway legs: a bare Starlette JSON route on the same uvicorn settings as the gateway."""

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
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)

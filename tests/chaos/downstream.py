"""The chaos downstream: inventory, payments and shipping over HTTP as `docs/downstream-http.md` specifies them,
written apart from the project's own server, with faults injected on demand and a ledger to audit afterwards.

It serves on a free port of 127.0.0.1 from a thread of the test process with its own event loop, so it keeps
answering while the saga's processes are killed or stopped. The test thread drives it through this object:

    with ChaosDownstream(seed=7, client_timeout=settings.downstream_timeout_seconds) as downstream:
        downstream.set_faults(unavailable_rate=0.1, lost_answer_rate=0.1)      # every route
        downstream.set_faults("charge", lost_answer_rate=0.5, lost_answer_mode="drop")  # this route
        ...  # run the stack against downstream.inventory_url, .payments_url, .shipping_url
        assert downstream.audit({order_id: ("completed", Decimal("149.93")), ...}) == []

A lost answer applies the effect, then either answers after twice `client_timeout` ("late": the client has
timed out by then) or sends the status line and closes the connection ("drop"): either way the client sees a
transport error although the effect happened (a refusal or a 400 is lost the same way, with no effect).
Every applied effect is in `ledger`; `audit` checks it. As in the contract, a release or refund of an id that
has nothing answers false and leaves no mark, so a reserve or charge arriving after it is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from tests.chaos import bodies
from tests.chaos.faults import FaultPlan, Faults, Injection, LostAnswerMode
from tests.chaos.ledger import EFFECT_KINDS, Effect, Ledger, audit
from tests.chaos.services import ChaosInventory, ChaosPayments, ChaosShipping, Refused

DEFAULT_STOCK = 1000
CREDIT_LIMIT = Decimal("5000.00")
Handler = Callable[[str, bytes], dict[str, Any]]


class AnswerDropped(Exception):
    """Raised after the status line is sent, so that uvicorn closes the connection mid-answer."""


class _DroppedAnswer(Response):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")]})
        raise AnswerDropped("the chaos downstream drops this answer on purpose")


class _QuietAboutDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], AnswerDropped))


class ChaosDownstream:
    def __init__(self, *, default_stock: int = DEFAULT_STOCK, credit_limit: Decimal = CREDIT_LIMIT, seed: int = 0,
                 client_timeout: float = 5.0):
        self.default_stock, self.credit_limit, self.client_timeout = default_stock, credit_limit, client_timeout
        self.ledger = Ledger()
        self.faults = Faults(seed)
        self._fresh_services()
        self.base_url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._log_filter = _QuietAboutDrops()

    def _fresh_services(self) -> None:
        self.inventory = ChaosInventory(self.ledger, self.default_stock)
        self.payments = ChaosPayments(self.ledger, self.credit_limit)
        self.shipping = ChaosShipping(self.ledger)

    # --- the test's controls -----------------------------------------------------------------------

    @property
    def inventory_url(self) -> str:
        return f"{self.base_url}/inventory"

    @property
    def payments_url(self) -> str:
        return f"{self.base_url}/payments"

    @property
    def shipping_url(self) -> str:
        return f"{self.base_url}/shipping"

    def set_faults(self, *kinds: str, unavailable_rate: float = 0.0, lost_answer_rate: float = 0.0,
                   slow_rate: float = 0.0, slow_seconds: float = 0.5, lost_answer_mode: LostAnswerMode = "late") -> None:
        """Faults for the given route kinds (`faults.ROUTE_KINDS`), or for every kind without its own plan."""
        plan = FaultPlan(unavailable_rate, lost_answer_rate, slow_rate, slow_seconds, lost_answer_mode)
        self.faults.set(plan, *kinds)

    def clear_faults(self) -> None:
        self.faults.clear()

    def effects(self) -> list[Effect]:
        return self.ledger.effects()

    def audit(self, expected: Mapping[str, tuple[str, Decimal]]) -> list[str]:
        return audit(self.ledger.effects(), expected)

    def figures(self) -> dict[str, int]:
        """Injected faults (`unavailable`, `lost_answers`, `slow`, also per route kind), `requests`, and the
        effects applied (`applied.reserve`, ...)."""
        applied = {f"applied.{kind}": 0 for kind in EFFECT_KINDS}
        for effect in self.ledger.effects():
            applied[f"applied.{effect.kind}"] += 1
        return {**self.faults.figures(), **applied}

    def reset(self) -> None:
        """Forget all state, the ledger, the faults and their counts (requests in flight still finish)."""
        self.ledger.clear()
        self.faults.reset()
        self._fresh_services()

    # --- the server ----------------------------------------------------------------------------------

    def start(self) -> ChaosDownstream:
        if self._thread is not None:
            raise RuntimeError("the chaos downstream is already running")
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=0, lifespan="off", log_level="warning",
                                access_log=False, timeout_graceful_shutdown=1)
        self._server = server = uvicorn.Server(config)
        logging.getLogger("uvicorn.error").addFilter(self._log_filter)
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(server),), name="chaos-downstream",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the chaos downstream did not start")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        server, thread, loop, stopping = self._server, self._thread, self._loop, self._stopping
        if server is None or thread is None:
            return
        if loop is not None and stopping is not None and thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)  # ends the pauses of slow and late answers
        server.should_exit = True
        thread.join(timeout=10)
        logging.getLogger("uvicorn.error").removeFilter(self._log_filter)
        self._server = self._thread = self._loop = self._stopping = None

    def __enter__(self) -> ChaosDownstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _serve(self, server: uvicorn.Server) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        await server.serve()

    async def _pause(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # --- the routes ----------------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(routes=[
            Mount("/inventory", routes=[
                self._route("/reservations/{key:path}", "PUT", "reserve", self._reserve),
                self._route("/reservations/{key:path}", "DELETE", "release", self._release),
                self._route("/stock/{key:path}", "PUT", "set_stock", self._set_stock),
                self._route("/stock/{key:path}", "GET", "stock", self._stock),
            ]),
            Mount("/payments", routes=[
                self._route("/charges/{key:path}", "PUT", "charge", self._charge),
                self._route("/charges/{key:path}", "DELETE", "refund", self._refund),
            ]),
            Mount("/shipping", routes=[self._route("/shipments/{key:path}", "PUT", "ship", self._ship)]),
        ])

    def _reserve(self, order_id: str, raw: bytes) -> dict[str, Any]:
        return {"orderId": order_id, "reservationId": self.inventory.reserve(order_id, bodies.reservation(raw))}

    def _release(self, order_id: str, raw: bytes) -> dict[str, Any]:
        return {"orderId": order_id, "released": self.inventory.release(order_id)}

    def _set_stock(self, product_id: str, raw: bytes) -> dict[str, Any]:
        quantity = bodies.stock(raw)
        self.inventory.set_stock(product_id, quantity)
        return {"productId": product_id, "available": quantity}

    def _stock(self, product_id: str, raw: bytes) -> dict[str, Any]:
        return {"productId": product_id, "available": self.inventory.available(product_id)}

    def _charge(self, order_id: str, raw: bytes) -> dict[str, Any]:
        customer_id, amount = bodies.charge(raw)
        return {"orderId": order_id, "transactionId": self.payments.charge(order_id, customer_id, amount)}

    def _refund(self, order_id: str, raw: bytes) -> dict[str, Any]:
        return {"orderId": order_id, "refunded": self.payments.refund(order_id)}

    def _ship(self, order_id: str, raw: bytes) -> dict[str, Any]:
        customer_id, items = bodies.shipment(raw)
        return {"orderId": order_id, "trackingId": self.shipping.ship(order_id, customer_id, items)}

    def _route(self, path: str, method: str, kind: str, handler: Handler) -> BaseRoute:
        async def endpoint(request: Request) -> Response:
            injection, plan = self.faults.draw(kind)
            if injection is Injection.UNAVAILABLE:
                return JSONResponse({"code": "Unavailable", "detail": f"{kind}: injected unavailability"}, 503)
            if injection is Injection.SLOW:
                await self._pause(plan.slow_seconds)
            response = _answer(handler, request.path_params["key"], await request.body())
            if injection is Injection.LOST_ANSWER:
                if plan.lost_answer_mode == "drop":
                    return _DroppedAnswer()
                await self._pause(2 * self.client_timeout)
            return response

        return Route(path, endpoint, methods=[method])


def _answer(handler: Handler, key: str, raw: bytes) -> Response:
    try:
        return JSONResponse(handler(key, raw))
    except bodies.InvalidBody as invalid:
        errors = [{"field": field, "message": message} for field, message in invalid.errors]
        return JSONResponse({"code": "InvalidRequest", "detail": str(invalid), "errors": errors}, 400)
    except Refused as refusal:
        return JSONResponse({"code": refusal.code, "detail": refusal.detail}, 409)

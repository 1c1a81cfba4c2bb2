"""Errors at the HTTP boundary: every failure becomes JSON `{"error", "message", ...}`, never a stack trace."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from fulfillment.bootstrap import Container
from fulfillment.domain import (
    ConcurrencyConflict,
    Forbidden,
    IdempotencyKeyReused,
    InvalidOrder,
    InvalidRequest,
    InvalidTransition,
    OrderNotFound,
    StoreUnavailable,
)
from gateway.auth import IssuerUnavailable, Unauthenticated

log = logging.getLogger("gateway.errors")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        self.status, self.code, self.message = status, code, message
        super().__init__(message)


def services(request: Request) -> Container:
    return request.scope["state"]["container"]  # the lifespan's state, without building a State per request


def _body(code: str, message: str, **more) -> dict:
    return {"error": code, "message": message, **more}


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(_body(exc.code, exc.message), status_code=exc.status)


async def invalid_request(request: Request, exc: InvalidRequest) -> JSONResponse:
    code = "validation_failed" if isinstance(exc, InvalidOrder) else "invalid_request"
    errors = [{"field": e.field, "message": e.message} for e in exc.errors]
    return JSONResponse(_body(code, str(exc), errors=errors), status_code=400)


async def unauthenticated(request: Request, exc: Unauthenticated) -> JSONResponse:
    return JSONResponse(_body("unauthorized", str(exc)), status_code=401,
                        headers={"WWW-Authenticate": exc.challenge})


async def forbidden(request: Request, exc: Forbidden) -> JSONResponse:
    return JSONResponse(_body("forbidden", str(exc)), status_code=403)


async def issuer_unavailable(request: Request, exc: IssuerUnavailable) -> JSONResponse:
    return _unavailable(request, exc, "the token issuer", "bearer tokens cannot be checked now", retry_after=5)


async def idempotency_key_reused(request: Request, exc: IdempotencyKeyReused) -> JSONResponse:
    return JSONResponse(_body("idempotency_key_reused", f"Idempotency-Key {exc.key!r} was already used with a "
                              "different body; send a new key for a new order"), status_code=422)


async def not_found(request: Request, exc: OrderNotFound) -> JSONResponse:
    return JSONResponse(_body("not_found", str(exc)), status_code=404)


async def conflict(request: Request, exc: InvalidTransition | ConcurrencyConflict) -> JSONResponse:
    return JSONResponse(_body("conflict", str(exc)), status_code=409)


async def unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
    return _unavailable(request, exc, "the order store", "the order store is unavailable", retry_after=1)


def _unavailable(request: Request, exc: Exception, what: str, message: str, *, retry_after: int) -> JSONResponse:
    """A 503 the client may retry after `retry_after` seconds; the cause goes to the log."""
    log.error(f"{what} is unavailable", extra={"path": request.url.path, "error": str(exc)})
    return JSONResponse(_body("unavailable", f"{message}, try again"), status_code=503,
                        headers={"Retry-After": str(retry_after)})


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(_body("http_error", exc.detail), status_code=exc.status_code, headers=exc.headers)


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", extra={"path": request.url.path})
    return JSONResponse(_body("internal_error", "an unexpected error occurred; it has been logged"),
                        status_code=500)


exception_handlers = {
    ApiError: api_error,
    Unauthenticated: unauthenticated,
    IssuerUnavailable: issuer_unavailable,
    Forbidden: forbidden,
    IdempotencyKeyReused: idempotency_key_reused,
    InvalidRequest: invalid_request,
    OrderNotFound: not_found,
    InvalidTransition: conflict,
    ConcurrencyConflict: conflict,
    StoreUnavailable: unavailable,
    HTTPException: http_error,
    Exception: unexpected,
}

"""`POST /api/events` (HandleInventoryEvent): the Event Grid webhook of contract §6.

Answers chosen so Event Grid retries only what can succeed later (see ../shared/spec/eventgrid-webhook.md):
401 for a missing or wrong key, 400 for a poison event, 413 for a body too large (none retried), 503 when
the store is unavailable (retried), 200 otherwise. Both handshakes are answered here.
"""

from __future__ import annotations

import hmac
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fulfillment.domain import InvalidRequest
from fulfillment.service.events import Outcome, parse_envelope
from fulfillment.service.requests import unicode_problem
from fulfillment.telemetry import WEBHOOK_EVENTS, tracer
from gateway.errors import ApiError, services
from gateway.rest import read_json

log = logging.getLogger("gateway.events")

VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"


def authenticate(request: Request) -> None:
    expected = services(request).settings.event_grid_webhook_key
    given = request.query_params.get("code") or request.headers.get("aeg-sas-key") or ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "pass the webhook key as ?code= or in the aeg-sas-key header")


async def abuse_protection_handshake(request: Request) -> Response:
    """CloudEvents webhook validation: echo the origin back, allowing any rate asked for."""
    authenticate(request)
    origin = request.headers.get("webhook-request-origin")
    if not origin:
        raise ApiError(400, "invalid_request", "the OPTIONS handshake needs a WebHook-Request-Origin header")
    headers = {"WebHook-Allowed-Origin": origin, "Allow": "POST, OPTIONS"}
    if request.headers.get("webhook-request-rate"):
        headers["WebHook-Allowed-Rate"] = "*"
    return Response(status_code=200, headers=headers)


async def receive_events(request: Request) -> Response:
    """Each event of the delivery to the event service; 400 naming every poison event and its fields.

    Event Grid answers for a whole delivery, never per event: a batch with a poison event (one the service
    refuses: a missing or unparseable time, a non-string id, a quantity, threshold or product id out of range,
    ...) is answered 400, so it is not retried but dead-lettered (or dropped) whole. Its valid events are
    recorded all the same, so they are not lost with it; replaying the dead-lettered batch after fixing the
    poison event records only that one, the others being redeliveries of known ids.
    """
    authenticate(request)
    payload = await read_json(request, wrong_media_type_status=400)  # Event Grid retries a 415, not a 400
    raw_events = payload if isinstance(payload, list) else [payload]
    if validation := _validation_code(raw_events):
        return JSONResponse({"validationResponse": validation})
    events = services(request).events
    outcomes, poison = [], []
    for index, raw in enumerate(raw_events):
        event_id = raw.get("id") if isinstance(raw, dict) else None
        # Not a string (1.5, 1e400), or not text (a lone surrogate): a poison event, its id not echoed back.
        event_id = event_id if isinstance(event_id, str) and not unicode_problem(event_id) else None
        with tracer.start_as_current_span("event", attributes={"cloudevents.event_id": str(event_id)}) as span:
            try:
                envelope = parse_envelope(raw)
                span.set_attribute("cloudevents.event_type", envelope.type)
                outcome = await events.handle(envelope)
            except InvalidRequest as error:
                poison.append({"index": index, "id": event_id, "error": str(error),
                               "fields": [field_error.field for field_error in error.errors]})
                outcome = Outcome.POISON
            span.set_attribute("outcome", str(outcome))
        outcomes.append(outcome)
        WEBHOOK_EVENTS.labels(str(outcome)).inc()
        log.info("event received", extra={"event_id": event_id, "outcome": outcome})
    if poison:
        return JSONResponse({"error": "poison_events", "message": "some events can never be processed",
                             "events": poison, "outcomes": outcomes}, status_code=400)
    return JSONResponse({"outcomes": outcomes})


def _validation_code(raw_events: list) -> str | None:
    for raw in raw_events:
        if isinstance(raw, dict) and raw.get("eventType") == VALIDATION_EVENT:
            code = (raw.get("data") or {}).get("validationCode") if isinstance(raw.get("data"), dict) else None
            if not isinstance(code, str) or not code or unicode_problem(code):
                raise ApiError(400, "invalid_request", "the validation event carries no data.validationCode (text)")
            return code
    return None


routes = [
    Route("/api/events", receive_events, methods=["POST"]),
    Route("/api/events", abuse_protection_handshake, methods=["OPTIONS"]),
]

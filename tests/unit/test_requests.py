"""Untrusted input shared by every entry point (REST, GraphQL, Service Bus, Event Grid): what is refused, and how."""

from __future__ import annotations

import pytest

from fulfillment.domain import InvalidRequest
from fulfillment.service.requests import decode_json, parse_create_order

ORDER = {"customerId": "c", "items": [{"productId": "p", "productName": "n", "quantity": 1, "unitPrice": 1}]}


def test_json_nested_deeper_than_the_decoder_recurses_is_not_json():
    with pytest.raises(ValueError, match="nested too deeply"):
        decode_json(b"[" * 100_000 + b"]" * 100_000)


def test_a_lone_surrogate_is_refused_as_a_request_naming_the_field():
    payload = decode_json(b'{"customerId": "c", "items": [{"productId": "p", "productName": "\\udc00 x", '
                          b'"quantity": 1, "unitPrice": 1}]}')

    with pytest.raises(InvalidRequest) as refused:  # Service Bus: dead-lettered as DeserializationFailed
        parse_create_order(payload)

    (error,) = refused.value.errors
    assert error.field == "items[0].productName"
    assert error.message == "must be Unicode text, got a lone surrogate U+DC00 at 0"


def test_text_beyond_the_basic_plane_is_accepted():
    assert parse_create_order({**ORDER, "customerId": "cust-😀"}).customerId == "cust-😀"

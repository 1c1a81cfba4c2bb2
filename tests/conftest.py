from __future__ import annotations

import copy

import pytest

from fulfillment.settings import Settings

SEED_ORDER = {
    "customerId": "cust-001",
    "items": [
        {"productId": "prod-100", "productName": "Wireless Headphones", "quantity": 2, "unitPrice": 49.99},
        {"productId": "prod-200", "productName": "USB-C Cable", "quantity": 5, "unitPrice": 9.99},
    ],
}


@pytest.fixture
def seed_order() -> dict:
    """The seed's sample CreateOrderRequest (total 149.93)."""
    return copy.deepcopy(SEED_ORDER)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, prefect_api_url="http://127.0.0.1:9/api", retry_base_seconds=0.001)

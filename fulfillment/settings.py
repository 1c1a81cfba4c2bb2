"""One typed settings object, read from environment variables and an optional `.env` file.

Names follow the original Azure Functions configuration (`OrderProcessing__SagaTimeoutMinutes`, ...); the
README's configuration table documents each one.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _option(default, name: str, **constraints):
    return Field(default, validation_alias=name, **constraints)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True, frozen=True)

    # Saga
    saga_timeout_minutes: float = _option(5, "OrderProcessing__SagaTimeoutMinutes", gt=0)
    step_attempts: int = _option(4, "OrderProcessing__StepAttempts", ge=1, le=20)
    retry_base_seconds: float = _option(0.2, "OrderProcessing__RetryBaseSeconds", ge=0)

    # Embedded store and downstream services (the defaults when nothing else is configured)
    data_dir: Path = _option(Path("var"), "OrderProcessing__DataDir")
    default_stock: int = _option(100, "OrderProcessing__DefaultStock", ge=0)
    credit_limit: Decimal = _option(Decimal("5000.00"), "OrderProcessing__CreditLimit", ge=0)
    transient_fault_rate: float = _option(0.0, "OrderProcessing__TransientFaultRate", ge=0, lt=1)

    # Worker
    worker_concurrency: int = _option(8, "OrderProcessing__WorkerConcurrency", ge=1, le=256)
    outbox_poll_seconds: float = _option(0.2, "OrderProcessing__OutboxPollSeconds", gt=0)

    # Prefect
    prefect_api_url: str = _option("http://127.0.0.1:4200/api", "PREFECT_API_URL")
    prefect_ui_url: str = _option("http://127.0.0.1:4200", "PREFECT_UI_URL")
    deployment_name: str = _option("order-saga/order-saga", "OrderProcessing__SagaDeployment")

    # Gateway
    gateway_host: str = _option("127.0.0.1", "OrderProcessing__GatewayHost")
    gateway_port: int = _option(8000, "OrderProcessing__GatewayPort", ge=0, le=65535)
    max_body_bytes: int = _option(1_048_576, "OrderProcessing__MaxBodyBytes", ge=1024)
    graphiql: bool = _option(True, "OrderProcessing__GraphiQL")
    graphql_max_depth: int = _option(8, "OrderProcessing__GraphQLMaxDepth", ge=2)
    page_size_max: int = _option(100, "OrderProcessing__MaxPageSize", ge=1)

    @property
    def saga_timeout_seconds(self) -> float:
        return self.saga_timeout_minutes * 60

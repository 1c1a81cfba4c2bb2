"""One typed settings object, read from environment variables and an optional `.env` file.

Names follow the original Azure Functions configuration (`OrderProcessing__SagaTimeoutMinutes`, ...); the
README's configuration table documents each one.
"""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from pathlib import Path
from typing import Annotated

from dotenv import load_dotenv
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_API_KEY_CHARS = 16

EMBEDDED_SERVICES_HOST = "127.0.0.1"
"""Not an option: the embedded services take no credentials, so they are served on loopback only (contract §3a)."""


def _option(default, name: str, **constraints):
    return Field(default, validation_alias=name, **constraints)


def load_dotenv_file(path: Path = Path(".env")) -> None:
    """Puts the variables of an optional `.env` into the environment (set variables win), so that options
    read by name at run time (`ServiceBusConnection`, `OTEL_*`, `LOG_LEVEL`, `PREFECT_*`) see it too."""
    load_dotenv(path, override=False)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True, frozen=True)

    # Saga
    saga_timeout_minutes: float = _option(5, "OrderProcessing__SagaTimeoutMinutes", gt=0)
    step_attempts: int = _option(4, "OrderProcessing__StepAttempts", ge=1, le=20)
    retry_base_seconds: float = _option(0.2, "OrderProcessing__RetryBaseSeconds", ge=0)
    compensation_attempts: int = _option(6, "OrderProcessing__CompensationAttempts", ge=1, le=50)
    saga_claim_seconds: float = _option(30, "OrderProcessing__SagaClaimSeconds", ge=1)
    max_job_attempts: int = _option(10, "OrderProcessing__MaxJobAttempts", ge=1)

    # Embedded store and downstream services (the defaults when nothing else is configured)
    data_dir: Path = _option(Path("var"), "OrderProcessing__DataDir")
    default_stock: int = _option(100, "OrderProcessing__DefaultStock", ge=0)
    credit_limit: Decimal = _option(Decimal("5000.00"), "OrderProcessing__CreditLimit", ge=0)
    transient_fault_rate: float = _option(0.0, "OrderProcessing__TransientFaultRate", ge=0, lt=1)
    # Their HTTP server (`python -m gateway.services_server`) on EMBEDDED_SERVICES_HOST; 0 = not served
    embedded_services_port: int = _option(8001, "OrderProcessing__EmbeddedServicesPort", ge=0, le=65535)

    # Real downstream services over HTTP (docs/downstream-http.md); unset = the embedded ones
    inventory_base_url: str | None = _option(None, "InventoryService__BaseUrl")
    payment_base_url: str | None = _option(None, "PaymentService__BaseUrl")
    shipping_base_url: str | None = _option(None, "ShippingService__BaseUrl")
    downstream_timeout_seconds: float = _option(5.0, "OrderProcessing__DownstreamTimeoutSeconds", gt=0)

    # Azure Service Bus (contract §5): the connection string is read from the variable this names
    service_bus_connection_name: str = _option("ServiceBusConnection", "OrderProcessing__ServiceBusConnectionName")
    orders_queue: str = _option("orders", "OrderProcessing__OrdersQueue")
    order_failures_queue: str = _option("order-failures", "OrderProcessing__OrderFailuresQueue")
    service_bus_max_concurrency: int = _option(8, "OrderProcessing__ServiceBusMaxConcurrency", ge=1, le=256)
    service_bus_prefetch: int = _option(16, "OrderProcessing__ServiceBusPrefetch", ge=0, le=1000)
    service_bus_max_lock_renewal_seconds: float = _option(300, "OrderProcessing__ServiceBusMaxLockRenewalSeconds", gt=0)
    local_service_bus_port: int = _option(5672, "OrderProcessing__LocalServiceBusPort", ge=1, le=65535)

    # Azure Cosmos DB order store (contract §7): selected by a connection string or an account endpoint
    cosmos_connection_string: str = _option("", "OrderProcessing__CosmosConnectionString")
    cosmos_endpoint: str = _option("", "OrderProcessing__CosmosEndpoint")
    cosmos_database_name: str = _option("orders-db", "OrderProcessing__CosmosDatabaseName")
    cosmos_container_name: str = _option("orders", "OrderProcessing__CosmosContainerName")
    cosmos_create_if_missing: bool = _option(True, "OrderProcessing__CosmosCreateIfMissing")
    cosmos_verify_tls: bool = _option(True, "OrderProcessing__CosmosVerifyTls")

    # Azure Event Grid webhook (contract §6): POST /api/events is served only when a key is set
    event_grid_webhook_key: str = _option("", "EventGrid__WebhookKey")

    # Executor (a Prefect worker of the work pool) and dispatcher
    work_pool: str = _option("order-saga", "OrderProcessing__WorkPool")
    worker_concurrency: int = _option(8, "OrderProcessing__WorkerConcurrency", ge=1, le=256)
    outbox_poll_seconds: float = _option(0.2, "OrderProcessing__OutboxPollSeconds", gt=0)

    # Prefect
    prefect_api_url: str = _option("http://127.0.0.1:4200/api", "PREFECT_API_URL")
    prefect_ui_url: str = _option("", "PREFECT_UI_URL", validate_default=True)  # unset: PREFECT_API_URL's server

    # Gateway
    gateway_host: str = _option("127.0.0.1", "OrderProcessing__GatewayHost")
    gateway_port: int = _option(8000, "OrderProcessing__GatewayPort", ge=0, le=65535)
    gateway_workers: int = _option(1, "OrderProcessing__GatewayWorkers", ge=1, le=64)
    max_body_bytes: int = _option(1_048_576, "OrderProcessing__MaxBodyBytes", ge=1024)
    graphiql: bool = _option(True, "OrderProcessing__GraphiQL")
    graphql_max_depth: int = _option(8, "OrderProcessing__GraphQLMaxDepth", ge=2)
    page_size_max: int = _option(100, "OrderProcessing__MaxPageSize", ge=1)
    graphql_max_aliases: int = _option(15, "OrderProcessing__GraphQLMaxAliases", ge=1)
    graphql_max_tokens: int = _option(2000, "OrderProcessing__GraphQLMaxTokens", ge=100)
    graphql_max_mutations: int = _option(5, "OrderProcessing__GraphQLMaxMutations", ge=1)
    idempotency_key_hours: float = _option(24, "OrderProcessing__IdempotencyKeyHours", gt=0)

    # Security (contract §3a; README "Security")
    api_keys: Annotated[list[str], NoDecode] = _option([], "OrderProcessing__ApiKeys")
    jwt_issuer: str = _option("", "OrderProcessing__JwtIssuer")
    jwt_audience: str = _option("", "OrderProcessing__JwtAudience")
    jwt_jwks_url: str = _option("", "OrderProcessing__JwtJwksUrl")
    jwt_customer_claim: str = _option("sub", "OrderProcessing__JwtCustomerClaim", min_length=1)
    allow_anonymous: bool = _option(False, "OrderProcessing__AllowAnonymous")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            value = [key.strip() for key in value.split(",") if key.strip()]
        if any(len(key) < MIN_API_KEY_CHARS for key in value):
            raise ValueError(f"every key must be at least {MIN_API_KEY_CHARS} characters long")
        return value

    @field_validator("prefect_ui_url")
    @classmethod
    def _ui_of_the_api(cls, value: str, info: ValidationInfo) -> str:
        """The UI is served with the API (`make up`): its links follow `PREFECT_API_URL` unless told otherwise."""
        api = info.data.get("prefect_api_url", "")
        return (value or api.rstrip("/").removesuffix("/api")).rstrip("/")

    @model_validator(mode="after")
    def _tokens_have_an_audience(self):
        if self.jwt_issuer and not self.jwt_audience:
            raise ValueError("OrderProcessing__JwtAudience must be set with OrderProcessing__JwtIssuer: "
                             "without it a token issued for any other application would be accepted")
        return self

    @property
    def saga_timeout_seconds(self) -> float:
        return self.saga_timeout_minutes * 60


def load_settings() -> Settings:
    """The settings, or an exit with one line per bad option (its variable and the problem), no traceback.

    Values are not echoed: an option may hold a key."""
    try:
        return Settings()
    except ValidationError as error:
        raise SystemExit("\n".join(f"configuration error: {_problem(detail)}" for detail in error.errors())) from None


def _problem(detail) -> str:
    message = detail["msg"].removeprefix("Value error, ")
    names = ".".join(str(part) for part in detail["loc"])
    return f"{names}: {message}" if names else message


def refuse_open_exposure(settings: Settings) -> None:
    """A gateway with no authentication serves loopback only, unless `OrderProcessing__AllowAnonymous` says
    that is meant (behind a proxy that authenticates, say). Raises SystemExit with the one line to act on; the
    gateway and `order-saga up` check it before they start anything."""
    if settings.api_keys or settings.jwt_issuer or settings.allow_anonymous or _is_loopback(settings.gateway_host):
        return
    raise SystemExit(f"order-saga gateway: refusing to serve {settings.gateway_host} without authentication; "
                     "set OrderProcessing__ApiKeys or OrderProcessing__JwtIssuer, or "
                     "OrderProcessing__AllowAnonymous=true to serve it open")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""The Service Bus listener process: orders from the `orders` queue, placed like `POST /api/orders` places them.

Run with `python -m deployments.servicebus_listener`. SIGINT or SIGTERM stops receiving, lets the messages in
flight finish (abandoning what does not finish in time, so Service Bus redelivers it), then exits.
"""

from __future__ import annotations

import asyncio
import os
import signal

from fulfillment.adapters.servicebus import (
    ClientFactory,
    ServiceBusOrderListener,
    client_factory,
    missing_connection_message,
)
from fulfillment.bootstrap import bootstrap
from fulfillment.logs import configure_logging
from fulfillment.settings import Settings, load_dotenv_file, load_settings


async def serve(settings: Settings, connect: ClientFactory) -> None:
    container = bootstrap(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await ServiceBusOrderListener(container.order_service, connect, settings).run(stop)
    finally:
        await container.aclose()


def client_factory_or_exit(settings: Settings, program: str) -> ClientFactory:
    try:
        connect = client_factory(settings, os.environ)
    except ValueError as error:
        raise SystemExit(f"{program}: {settings.service_bus_connection_name} is not a valid Service Bus "
                         f"connection string: {error}") from None
    if connect is None:
        raise SystemExit(f"{program}: {missing_connection_message(settings)}")
    return connect


def main() -> None:
    load_dotenv_file()
    configure_logging()
    settings = load_settings()
    asyncio.run(serve(settings, client_factory_or_exit(settings, "servicebus listener")))


if __name__ == "__main__":
    main()

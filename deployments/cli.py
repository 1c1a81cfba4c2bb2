"""The `order-saga` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from fulfillment.settings import load_dotenv_file, load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="order-saga", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the Prefect server, the saga worker and the gateway")
    up.add_argument("--with-queue", action="store_true",
                    help="also start a local Service Bus (127.0.0.1, OrderProcessing__LocalServiceBusPort) and "
                         "the listener on it: `order-saga submit --local` sends to it")
    up.add_argument("--profile", choices=["embedded", "scaled"], default="embedded",
                    help="embedded (default): Prefect on SQLite in one process; scaled: Prefect on PostgreSQL and "
                         "Redis from the machine's packages, its API in several processes and its services apart "
                         "(README, \"Scaling out\")")
    up.add_argument("--executors", type=int, help="saga executors to start (default: 1, scaled: 2)")
    up.add_argument("--api-workers", type=int, help="Prefect API processes (scaled only; default 2)")
    commands.add_parser("worker", help="start one more saga executor (a Prefect worker of the order-saga pool) "
                                       "against the running stack",
                        description="Runs one more saga executor in the foreground, with the environment "
                                    "`order-saga up` gives its worker (PREFECT_HOME, PREFECT_API_URL, the metrics "
                                    "directory, ...), against the same stores and Prefect server. Ctrl-C stops it.")
    submit = commands.add_parser("submit", help="send orders to the Service Bus orders queue",
                                 description="Sends orders (a JSON object, an array of them, or JSON lines) to the "
                                             "orders queue, one message each, using the configured connection.")
    submit.add_argument("file", help="a file of orders, or - for standard input")
    submit.add_argument("--local", action="store_true",
                        help="send to the local Service Bus of `order-saga up --with-queue`")
    arguments = parser.parse_args(argv)
    load_dotenv_file()
    if arguments.command == "up":
        from deployments.stack import up

        raise SystemExit(up(load_settings(), with_queue=arguments.with_queue, topology=topology(arguments)))
    if arguments.command == "worker":
        from deployments.stack import run_worker

        run_worker(load_settings())
    if arguments.command == "submit":
        submit_orders(arguments.file, local=arguments.local)


def topology(arguments: argparse.Namespace):
    from deployments.scaled import Topology

    scaled = arguments.profile == "scaled"
    default = 2 if scaled else 1
    return Topology(executors=default if arguments.executors is None else arguments.executors,
                    api_workers=default if arguments.api_workers is None else arguments.api_workers, scaled=scaled,
                    listeners=default)


def submit_orders(path: str, *, local: bool = False) -> None:
    from deployments.servicebus_listener import client_factory_or_exit
    from deployments.stack import local_queue_connection
    from fulfillment.adapters.servicebus import send_orders

    settings = load_settings()
    if local:
        os.environ[settings.service_bus_connection_name] = local_queue_connection(settings)
    connect = client_factory_or_exit(settings, "order-saga submit")
    orders = read_orders(path)
    if not orders:
        raise SystemExit(f"order-saga submit: no orders in {path}")
    queue = settings.orders_queue

    def progress(sent: int) -> None:
        print(f"sent {sent}/{len(orders)} orders to queue '{queue}'", flush=True)

    asyncio.run(send_orders(connect, queue, orders, progress=progress))


def read_orders(path: str) -> list[Any]:
    """Orders from a file or `-` (stdin): one JSON object, a JSON array of them, or one object per line."""
    text = sys.stdin.read() if path == "-" else _read_file(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return [_json_line(line, number) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    return document if isinstance(document, list) else [document]


def _read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as error:
        raise SystemExit(f"order-saga submit: cannot read {path}: {error.strerror}") from None


def _json_line(line: str, number: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise SystemExit(f"order-saga submit: line {number} is not JSON: {error.msg}") from None

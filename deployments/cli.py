"""The `order-saga` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from fulfillment.settings import Settings, load_dotenv_file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="order-saga", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the Prefect server, the saga worker and the gateway")
    commands.add_parser("worker", help="start one more saga executor (a Prefect worker of the order-saga pool) "
                                       "against the running stack",
                        description="Runs one more saga executor in the foreground, with the environment "
                                    "`order-saga up` gives its worker (PREFECT_HOME, PREFECT_API_URL, the metrics "
                                    "directory, ...), against the same stores and Prefect server. Ctrl-C stops it.")
    submit = commands.add_parser("submit", help="send orders to the Service Bus orders queue",
                                 description="Sends orders (a JSON object, an array of them, or JSON lines) to the "
                                             "orders queue, one message each, using the configured connection.")
    submit.add_argument("file", help="a file of orders, or - for standard input")
    arguments = parser.parse_args(argv)
    load_dotenv_file()
    if arguments.command == "up":
        from deployments.stack import up

        raise SystemExit(up(Settings()))
    if arguments.command == "worker":
        from deployments.stack import run_worker

        run_worker(Settings())
    if arguments.command == "submit":
        submit_orders(arguments.file)


def submit_orders(path: str) -> None:
    from deployments.servicebus_listener import client_factory_or_exit
    from fulfillment.adapters.servicebus import send_orders

    settings = Settings()
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

"""The `order-saga` command."""

from __future__ import annotations

import argparse
import os

from fulfillment.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="order-saga", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the Prefect server, the saga worker and the gateway")
    arguments = parser.parse_args(argv)
    if arguments.command == "up":
        from deployments.stack import Stack, prefect_environment

        settings = Settings()
        os.environ.update(prefect_environment(settings))
        raise SystemExit(Stack(settings).run())

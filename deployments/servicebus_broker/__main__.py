"""`python -m deployments.servicebus_broker --port PORT [QUEUE ...]`: the local broker until SIGINT or SIGTERM.

Messages live in memory: a restart of the broker loses the ones not yet received.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from deployments.servicebus_broker.broker import LocalServiceBus
from fulfillment.logs import configure_logging

log = logging.getLogger("deployments.servicebus_broker")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.servicebus_broker")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("queues", nargs="+")
    arguments = parser.parse_args()
    configure_logging()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    broker = LocalServiceBus(tuple(arguments.queues), lock_duration=30, port=arguments.port).start()
    log.info("local service bus listening", extra={"port": broker.port, "queues": arguments.queues})
    stop.wait()
    broker.stop()
    log.info("local service bus stopped")


if __name__ == "__main__":
    main()

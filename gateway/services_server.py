"""Serves the embedded downstream services over HTTP on 127.0.0.1 only: `python -m gateway.services_server`.

Anyone who reaches them can set stock, refund charges and ship orders, with no credentials, so they never share
the gateway's public listener (contract §3a) and their host is not an option: only the port is
(`OrderProcessing__EmbeddedServicesPort`; 0 = not served).
"""

import uvicorn

from fulfillment.logs import configure_logging
from fulfillment.settings import EMBEDDED_SERVICES_HOST, load_dotenv_file, load_settings
from gateway.downstream import create_services_app


def main() -> None:
    load_dotenv_file()
    configure_logging()
    settings = load_settings()
    if not settings.embedded_services_port:
        raise SystemExit("OrderProcessing__EmbeddedServicesPort is 0: the embedded services are not served")
    uvicorn.run(create_services_app(settings), host=EMBEDDED_SERVICES_HOST, port=settings.embedded_services_port,
                log_level="warning", log_config=None, access_log=False)


if __name__ == "__main__":
    main()

"""The project's HTTP clients of the three downstream services, for tests against a server of the contract."""

from __future__ import annotations

from dataclasses import dataclass

from fulfillment.adapters.http_services import HttpInventory, HttpPayments, HttpShipping


@dataclass
class Clients:
    inventory: HttpInventory
    payments: HttpPayments
    shipping: HttpShipping

    @classmethod
    def of(cls, server_url: str, timeout: float = 5.0) -> Clients:
        """Clients of a server that serves the services under `/inventory`, `/payments` and `/shipping`."""
        return cls(HttpInventory(f"{server_url}/inventory", timeout=timeout),
                   HttpPayments(f"{server_url}/payments", timeout=timeout),
                   HttpShipping(f"{server_url}/shipping", timeout=timeout))

    async def aclose(self) -> None:
        for client in (self.inventory, self.payments, self.shipping):
            await client.aclose()

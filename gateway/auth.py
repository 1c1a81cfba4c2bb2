"""Who is calling (contract §3a), in the conventions of the seed's platform.

- A function key (`OrderProcessing__ApiKeys`) in the `x-functions-key` header or `?code=`: a trusted service,
  acting for any customer.
- A bearer JWT from the configured OIDC issuer (Microsoft Entra ID or any other): signature (the issuer's JWKS),
  issuer, audience, expiry and not-before are checked by PyJWT. It acts for the customer its
  `OrderProcessing__JwtCustomerClaim` names, or for any customer with the `Orders.Admin` role.
- Neither configured: anyone, as a trusted local caller; `refuse_open_exposure` (settings) keeps such a gateway
  on loopback.

Missing or bad credentials raise `Unauthenticated` (401 with `WWW-Authenticate`); what an actor may do is the
service layer's business (`Actor`, `Forbidden`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

import httpx
import jwt
from starlette.requests import Request

from fulfillment.domain import Actor
from fulfillment.settings import Settings

ADMIN_ROLE = "Orders.Admin"
ASYMMETRIC_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
CLOCK_LEEWAY_S = 60
REFETCH_FLOOR_S = 30.0
ANONYMOUS = Actor.trusted("anonymous")


class Unauthenticated(Exception):
    """No credentials, or credentials that prove nothing. `error` is RFC 6750's code for a bad bearer token."""

    def __init__(self, message: str, *, error: str | None = None):
        self.error = error
        super().__init__(message)

    @property
    def challenge(self) -> str:
        """The `WWW-Authenticate` value: a bearer challenge (function keys have no standard scheme)."""
        challenge = 'Bearer realm="order-saga"'
        if self.error:
            challenge += f', error="{self.error}", error_description="{str(self).replace(chr(34), chr(39))}"'
        return challenge


class IssuerUnavailable(Exception):
    """The token issuer's keys could not be fetched: no token can be checked until it answers."""


class SigningKeys:
    """The issuer's JSON Web Key Set: fetched on first use (from `jwks_url`, or the one the issuer's
    `/.well-known/openid-configuration` names) and cached; fetched again when a token names a key id the
    cache lacks (the issuer rotated its keys), at most once per `REFETCH_FLOOR_S`, so that tokens with made-up
    key ids cannot make the gateway hammer the issuer."""

    def __init__(self, issuer: str, jwks_url: str | None, http: httpx.AsyncClient):
        self._issuer = issuer
        self._jwks_url = jwks_url
        self._http = http
        self._keys: dict[str | None, jwt.PyJWK] | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> jwt.PyJWK:
        keys = self._keys
        if keys is None or (kid not in keys and time.monotonic() - self._fetched_at >= REFETCH_FLOOR_S):
            keys = await self._refetch(keys)
        if kid in keys:
            return keys[kid]
        raise Unauthenticated(f"the token is signed with key {kid!r}, which is not one of the issuer's",
                              error="invalid_token")

    async def _refetch(self, stale: dict | None) -> dict[str | None, jwt.PyJWK]:
        async with self._lock:
            if self._keys is not stale:  # another request fetched them while this one waited
                return self._keys
            try:
                url = self._jwks_url or await self._discovered_jwks_url()
                response = await self._http.get(url)
                response.raise_for_status()
                key_set = jwt.PyJWKSet.from_dict(response.json())
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
                raise IssuerUnavailable(f"cannot fetch the signing keys of {self._issuer}: {error}") from error
            keys = {key.key_id: key for key in key_set.keys}
            if len(keys) == 1:
                keys.setdefault(None, next(iter(keys.values())))  # a token without `kid` names the only key
            self._keys, self._fetched_at = keys, time.monotonic()
            return keys

    async def _discovered_jwks_url(self) -> str:
        response = await self._http.get(f"{self._issuer.rstrip('/')}/.well-known/openid-configuration")
        response.raise_for_status()
        self._jwks_url = str(response.json()["jwks_uri"])
        return self._jwks_url


class TokenVerifier:
    def __init__(self, settings: Settings, keys: SigningKeys):
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._customer_claim = settings.jwt_customer_claim
        self._keys = keys

    async def actor(self, token: str) -> Actor:
        claims = await self._claims(token)
        name = f"token:{claims['sub']}"
        if ADMIN_ROLE in _roles(claims):
            return Actor.trusted(name)
        customer_id = claims.get(self._customer_claim)
        if not isinstance(customer_id, str) or not customer_id:
            raise Unauthenticated(f"the token has no {self._customer_claim!r} claim naming a customer",
                                  error="invalid_token")
        return Actor.customer(name, customer_id)

    async def _claims(self, token: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = await self._keys.key(kid if isinstance(kid, str) else None)
            return jwt.decode(token, key, algorithms=ASYMMETRIC_ALGORITHMS, audience=self._audience,
                              issuer=self._issuer, leeway=CLOCK_LEEWAY_S,
                              options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.PyJWTError as error:
            raise Unauthenticated(f"the bearer token is not valid: {error}", error="invalid_token") from None


class Authenticator:
    """Turns a request's credentials into an `Actor`. Credentials are looked for in this order: the
    `x-functions-key` header, an `Authorization: Bearer` token, then `?code=`."""

    def __init__(self, api_keys: list[str], tokens: TokenVerifier | None):
        self._api_keys = [key.encode() for key in api_keys]
        self._tokens = tokens

    @property
    def required(self) -> bool:
        return bool(self._api_keys or self._tokens)

    async def actor(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Actor:
        if not self.required:
            return ANONYMOUS
        if key := headers.get("x-functions-key"):
            return self._key_holder(key)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            if self._tokens is None:
                raise Unauthenticated("bearer tokens are not accepted here: no token issuer is configured",
                                      error="invalid_token")
            return await self._tokens.actor(token.strip())
        if key := query.get("code"):
            return self._key_holder(key)
        raise Unauthenticated("send a function key (x-functions-key header or ?code=) or a bearer token")

    async def actor_from_connection(self, params: Mapping[str, Any], headers: Mapping[str, str],
                                    query: Mapping[str, str]) -> Actor:
        """A WebSocket's caller: credentials in the `connection_init` payload (`Authorization`,
        `x-functions-key`; browsers cannot set headers on a WebSocket), else on the upgrade request."""
        given = {name.lower(): value for name, value in params.items() if isinstance(value, str)}
        return await self.actor(given or headers, query)

    def _key_holder(self, key: str) -> Actor:
        given = key.encode()
        if not any(hmac.compare_digest(given, known) for known in self._api_keys):
            raise Unauthenticated("the function key is not valid")
        return Actor.trusted(f"key:{hashlib.sha256(given).hexdigest()[:12]}")


async def caller(request: Request) -> Actor:
    """The actor behind an HTTP request, by the app's authenticator (in the lifespan state)."""
    authenticator: Authenticator = request.scope["state"]["authenticator"]
    return await authenticator.actor(request.headers, request.query_params)


def create_authenticator(settings: Settings, http: httpx.AsyncClient) -> Authenticator:
    tokens = None
    if settings.jwt_issuer:
        keys = SigningKeys(settings.jwt_issuer, settings.jwt_jwks_url or None, http)
        tokens = TokenVerifier(settings, keys)
    return Authenticator(settings.api_keys, tokens)


def _roles(claims: Mapping[str, Any]) -> list[str]:
    roles = claims.get("roles", [])
    return roles if isinstance(roles, list) else [roles]

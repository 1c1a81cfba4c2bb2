"""A local OIDC issuer for the tests: a real HTTP server (no network beyond loopback) that publishes its
discovery document and JSON Web Key Set, with keys generated per test session, and mints tokens."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

AUDIENCE = "api://order-saga"


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(uuid.uuid4().hex[:8], rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        return {**json.loads(RSAAlgorithm.to_jwk(self.private.public_key())), "kid": self.kid, "use": "sig",
                "alg": "RS256"}


@dataclass
class Issuer:
    url: str
    published: list[SigningKey]
    fetches: list[str] = field(default_factory=list)  # the paths asked for, in order

    def token(self, subject: str = "cust-001", *, key: SigningKey | None = None, lifetime_s: float = 300,
              not_before_s: float = 0, **claims) -> str:
        """A token as the issuer would sign it for `subject`; `claims` replace or add claims."""
        now = time.time()
        key = key or self.published[0]
        payload = {"iss": self.url, "aud": AUDIENCE, "sub": subject, "iat": int(now),
                   "nbf": int(now + not_before_s), "exp": int(now + lifetime_s), **claims}
        return jwt.encode(payload, key.private, algorithm="RS256", headers={"kid": key.kid})

    def rotate(self) -> SigningKey:
        """Publishes a new key beside the old ones (as issuers do before signing with it)."""
        key = SigningKey.generate()
        self.published.append(key)
        return key


@contextmanager
def running_issuer() -> Iterator[Issuer]:
    issuer = Issuer(url="", published=[SigningKey.generate()])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            issuer.fetches.append(self.path)
            if self.path == "/.well-known/openid-configuration":
                body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/keys"}
            elif self.path == "/keys":
                body = {"keys": [key.jwk() for key in issuer.published]}
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()

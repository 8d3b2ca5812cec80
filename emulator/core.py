"""The emulator's core: the estate, clock, faults, token issuer, rate limits and request counts every surface uses,
and how a handler finds it (`emulator_of`). Token checks live here because every surface authenticates the same way.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web

from emulator.faults import Faults, TokenBucket, WindowQuota
from emulator.model import Estate
from emulator.records import Clock
from emulator.tokens import Claims, TokenIssuer
from emulator.wire import AUDIENCES, Reply, accepted_audiences, error


class Emulator:
    """Everything a handler needs: the estate, clock, faults, tokens, limits and counters."""

    def __init__(self, seed: dict[str, Any], base_latency_ms: int = 0) -> None:
        self.seed = seed
        self.clock = Clock()
        self.endpoint = "https://127.0.0.1"
        self.base_latency_ms = base_latency_ms
        self.estate = Estate(seed, self.clock)
        self.faults = Faults(self.estate.rng)
        self.tokens = TokenIssuer(self.estate.tenant_id, self.endpoint)
        self.counts: Counter[str] = Counter()
        self.api_versions: Counter[tuple[str, str]] = Counter()  # (surface.operation, api-version) -> requests
        self._fresh_limits()

    def _fresh_limits(self) -> None:
        limits = self.seed.get("limits", {})
        self.arm_reads = TokenBucket(limits.get("arm_read_capacity", 250), limits.get("arm_read_refill", 25))
        self.arm_writes = TokenBucket(limits.get("arm_write_capacity", 200), limits.get("arm_write_refill", 10))
        self.rg_quota = WindowQuota(limits.get("resourcegraph_queries", 15), limits.get("resourcegraph_window", 5))
        # Graph identity and access: 8,000 resource units per 10 s per app and tenant (a large tenant).
        self.graph_rate = TokenBucket(limits.get("graph_capacity", 8000), limits.get("graph_refill", 800))

    def reset(self, seed: dict[str, Any] | None = None) -> None:
        if seed is not None:
            self.seed = seed
        self.clock.offset = 0.0
        self.estate = Estate(self.seed, self.clock)
        self.faults = Faults(self.estate.rng)
        if self.tokens.tenant_id != self.estate.tenant_id:
            self.tokens = TokenIssuer(self.estate.tenant_id, self.endpoint)
        self.counts.clear()
        self.api_versions.clear()
        self._fresh_limits()

    def set_endpoint(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.tokens = TokenIssuer(self.estate.tenant_id, endpoint)

    def entra_refusal(self, app_id: str, secret: str) -> str | None:
        """Why Entra would refuse this client secret right now (AADSTS text), or None if it accepts it.

        Used by the token endpoint and by AKS when a reset hands it a new secret. A `replication_delay` fault (or
        the estate's `replication_seconds`) makes a new password fail intermittently until replicas catch up.
        """
        invalid = (
            f"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the "
            f"client secret value, not the client secret ID, for a secret added to app '{app_id}'."
        )
        password = self.estate.find_password(app_id, secret)
        if password is None:
            return invalid
        now = self.clock.now()
        if now >= password.end:
            return f"AADSTS7000222: The provided client secret keys for app '{app_id}' are expired."
        if now < password.start:
            return invalid
        rule = self.faults.find("entra", "replication_delay", app_id)
        delay = rule.seconds if rule is not None else self.estate.replication_seconds
        if rule is not None and rule.probability < 1.0 and self.estate.rng.random() >= rule.probability:
            delay = 0.0
        return None if self.estate.replicated(password, delay) else invalid

    def authenticate(self, request: web.Request, surface: str) -> Claims:
        """Verify the bearer token for this surface's audience or raise `Reply` with the service's 401."""
        header = request.headers.get("Authorization", "")
        audience = AUDIENCES[surface]
        if not header.lower().startswith("bearer "):
            raise Reply(self.unauthorized(surface, "missing", audience))
        verdict = self.tokens.verify(
            header[7:].strip(), accepted_audiences(surface, self.endpoint), self.clock.timestamp()
        )
        if isinstance(verdict, str):
            raise Reply(self.unauthorized(surface, verdict, audience))
        return verdict

    def unauthorized(self, surface: str, reason: str, audience: str) -> web.Response:
        authority = f"{self.endpoint}/{self.estate.tenant_id}"
        if surface == "keyvault":
            challenge = f'Bearer authorization="{authority}", resource="{audience}"'
            code = "Unauthorized"
            message = "AKV10000: Request is missing a Bearer or PoP token." if reason == "missing" else reason
            return error(surface, 401, code, message, {"WWW-Authenticate": challenge})
        if surface == "graph":
            message = "Access token is empty." if reason == "missing" else f"Access token validation failure: {reason}."
            code = "InvalidAuthenticationToken"
            return error(surface, 401, code, message)
        challenge = f'Bearer authorization_uri="{authority}", error="invalid_token", error_description="{reason}"'
        if reason == "missing":
            return error(
                surface,
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                {"WWW-Authenticate": challenge},
            )
        code = "ExpiredAuthenticationToken" if reason == "token expired" else "InvalidAuthenticationToken"
        return error(surface, 401, code, f"The access token is invalid: {reason}.", {"WWW-Authenticate": challenge})


EMULATOR_KEY = web.AppKey("emulator", Emulator)


def emulator_of(request: web.Request) -> Emulator:
    return request.app[EMULATOR_KEY]

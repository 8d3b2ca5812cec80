"""JWT access tokens as Entra issues them (RS256, v1-style claims the resource servers check)."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

TOKEN_LIFETIME_SECONDS = 3599


@dataclass(frozen=True)
class Claims:
    app_id: str
    object_id: str
    audience: str
    roles: tuple[str, ...]
    expires: int


class TokenIssuer:
    def __init__(self, tenant_id: str, issuer_base: str) -> None:
        self.tenant_id = tenant_id
        self.issuer = f"{issuer_base}/{tenant_id}/v2.0"
        self.kid = "emulator-" + uuid.uuid4().hex[:8]
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def issue(self, app_id: str, object_id: str, audience: str, roles: list[str], now: float) -> tuple[str, int]:
        exp = int(now) + TOKEN_LIFETIME_SECONDS
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": self.issuer,
            "iat": int(now),
            "nbf": int(now),
            "exp": exp,
            "appid": app_id,
            "azp": app_id,
            "oid": object_id,
            "sub": object_id,
            "tid": self.tenant_id,
            "idtyp": "app",
            "ver": "2.0",
            "uti": uuid.uuid4().hex[:22],
        }
        if roles:
            claims["roles"] = sorted(roles)
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
        return token, exp

    def verify(self, token: str, audiences: frozenset[str], now: float) -> Claims | str:
        """Claims, or the reason the token is refused (wrong signature, audience, expiry)."""
        try:
            payload = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS256"],
                audience=sorted(audiences),
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidAudienceError:
            return "invalid audience"
        except jwt.PyJWTError:
            return "invalid token"
        if int(payload["exp"]) <= now:
            return "token expired"
        if payload.get("tid") != self.tenant_id:
            return "wrong tenant"
        return Claims(
            app_id=payload["appid"],
            object_id=payload["oid"],
            audience=str(payload["aud"]),
            roles=tuple(payload.get("roles", ())),
            expires=int(payload["exp"]),
        )

    def jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()

        def b64(value: int) -> str:
            raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        return {"keys": [{"kty": "RSA", "use": "sig", "kid": self.kid, "n": b64(numbers.n), "e": b64(numbers.e)}]}

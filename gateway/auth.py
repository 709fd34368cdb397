"""Bearer-JWT authentication: a token's ``sub`` is the merchant, its ``scope`` what it may do.

Algorithms are pinned per key: HS256 for a shared secret, RS256 or ES256 for the public key's
type. ``none`` and HS/RS confusion are impossible because the accepted list never mixes them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from gateway.domain.errors import Forbidden, Unauthorized
from gateway.settings import DEV_JWT_SECRET, Settings, SettingsError

__all__ = ["SCOPES", "Authenticator", "Merchant", "require"]

log = logging.getLogger("gateway.auth")

#: sessions:write creates, captures and cancels (voids) sessions; refunds:write refunds them;
#: sessions:read reads sessions and their refunds; routing:* the routing endpoints
SCOPES = ("sessions:write", "sessions:read", "refunds:write", "routing:read", "routing:admin")


@dataclass(frozen=True, slots=True)
class Merchant:
    """The authenticated application."""

    merchant_id: str
    scopes: frozenset[str]


_MERCHANT_KEY: web.RequestKey[Merchant] = web.RequestKey("merchant", Merchant)


def _algorithm_for(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "ES256"
    raise SettingsError("JWT key must be an RSA or EC (P-256) key in PEM form")


class Authenticator:
    """Verifies bearer tokens; built once from settings."""

    def __init__(self, settings: Settings) -> None:
        problem = settings.jwt_key_problem()
        if problem:
            raise SettingsError(problem)
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_seconds
        self._signing_key: Any = None
        if settings.jwt_public_key_file is not None:
            self._key: Any = load_pem_public_key(settings.jwt_public_key_file.read_bytes())
            self._algorithm = _algorithm_for(self._key)
            if settings.jwt_private_key_file is not None:
                self._signing_key = _load_private(settings.jwt_private_key_file)
        else:
            if settings.jwt_secret is None:
                log.warning(
                    "GATEWAY_JWT_SECRET is not set: using the built-in DEVELOPMENT secret. "
                    "Anyone can mint tokens for this gateway. Never run it like this in production."
                )
                secret = DEV_JWT_SECRET
            else:
                secret = settings.jwt_secret.get_secret_value()
            self._key = secret
            self._signing_key = secret
            self._algorithm = "HS256"
        self._options: jwt.types.Options = {
            "require": ["exp", "sub"],
            "verify_aud": self._audience is not None,
        }
        self._cache: dict[str, tuple[Merchant, float]] = {}

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def verify(self, token: str) -> Merchant:
        """The merchant a token names; raises :class:`Unauthorized` for any bad token."""
        if not token.isascii():
            # a compact JWT is base64url and dots; anything else (including the undecodable
            # bytes aiohttp hands over as surrogates) is malformed, never a 500
            raise Unauthorized(details="token malformed")
        cached = self._cache.get(token)
        if cached is not None:
            if cached[1] > time.time():
                return cached[0]
            del self._cache[token]
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=self._options,
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(details=_reason(exc)) from None
        for name in _NUMERIC_DATES:
            if name in claims and not _is_numeric_date(claims[name]):
                raise Unauthorized(details=f"token {name!r} claim must be a number of seconds")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise Unauthorized(details="token subject must name the merchant")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise Unauthorized(details="scope must be a space-separated string")
        merchant = Merchant(sub, frozenset(scope.split()))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (merchant, float(claims["exp"]) + self._leeway)
        return merchant

    def issue(self, merchant_id: str, scopes: list[str], ttl_seconds: int) -> str:
        """Mint a token this authenticator accepts (for `gateway token` and tests)."""
        if self._signing_key is None:
            raise SettingsError("minting RS256/ES256 tokens needs GATEWAY_JWT_PRIVATE_KEY_FILE")
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": merchant_id,
            "scope": " ".join(scopes),
            "iat": now,
            "exp": now + ttl_seconds,
        }
        if self._audience:
            claims["aud"] = self._audience
        if self._issuer:
            claims["iss"] = self._issuer
        return jwt.encode(claims, self._signing_key, algorithm=self._algorithm)


#: RFC 7519 NumericDate claims: PyJWT alone would take ``"exp": "1790000000"`` or Infinity
_NUMERIC_DATES = ("exp", "nbf", "iat")


def _is_numeric_date(value: Any) -> bool:
    """A JSON number (not a string, a boolean, NaN or infinity) that fits a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _load_private(path: Path) -> Any:
    return load_pem_private_key(path.read_bytes(), password=None)


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "token audience not accepted"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token issuer not accepted"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "token algorithm not accepted"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "token signature invalid"
    return "token malformed"


async def require(request: web.Request, scope: str) -> Merchant:
    """Authenticate the request and check it carries ``scope`` (401 / 403 otherwise)."""
    merchant: Merchant | None = request.get(_MERCHANT_KEY)
    if merchant is None:
        header = request.headers.get("Authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthorized()
        from gateway.appkeys import AUTH

        merchant = request.app[AUTH].verify(token.strip())
        request[_MERCHANT_KEY] = merchant
    if scope not in merchant.scopes:
        raise Forbidden(f"The API token lacks the {scope!r} scope")
    return merchant

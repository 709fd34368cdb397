"""JWT verification: algorithms pinned per key, exp/aud/iss, scopes, start-up refusals."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import Authenticator
from gateway.domain.errors import Unauthorized
from gateway.settings import Settings, SettingsError
from tests.api.conftest import JWT_SECRET, SEED_BYTES, GatewayFactory, headers


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "m-1", "scope": "sessions:write", "exp": int(time.time()) + 60, **extra}


def write_keys(tmp_path: Path, kind: str) -> tuple[Path, Path, Any]:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    priv = tmp_path / f"{kind}.key"
    pub = tmp_path / f"{kind}.pub"
    priv.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub, private


def test_hs256_round_trip_and_scopes() -> None:
    auth = Authenticator(settings(jwt_secret=JWT_SECRET))
    merchant = auth.verify(auth.issue("m-1", ["sessions:write", "routing:read"], 60))
    assert merchant.merchant_id == "m-1"
    assert merchant.scopes == {"sessions:write", "routing:read"}


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(claims(exp=int(time.time()) - 120), JWT_SECRET, algorithm="HS256"),
        jwt.encode({"sub": "m-1", "scope": "sessions:write"}, JWT_SECRET, algorithm="HS256"),
        jwt.encode(claims(), "another-secret-of-sufficient-length-000", algorithm="HS256"),
        jwt.encode(claims(), None, algorithm="none"),  # type: ignore[arg-type]
        jwt.encode(claims(sub=""), JWT_SECRET, algorithm="HS256"),
        "a.b.c",
    ],
    ids=["expired", "no-exp", "wrong-secret", "alg-none", "empty-sub", "garbage"],
)
def test_bad_hs256_tokens_are_refused(token: str) -> None:
    auth = Authenticator(settings(jwt_secret=JWT_SECRET))
    with pytest.raises(Unauthorized):
        auth.verify(token)


def signed(payload: bytes) -> str:
    """An HS256 token over exactly ``payload`` (JSON PyJWT itself would never write)."""
    return jwt.api_jws.encode(payload, JWT_SECRET, algorithm="HS256")


LATER = int(time.time()) + 600


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (f'{{"sub":"m-1","exp":"{LATER}"}}', "'exp' claim must be a number"),
        ('{"sub":"m-1","exp":Infinity}', "token malformed"),  # PyJWT refuses these itself
        ('{"sub":"m-1","exp":NaN}', "token malformed"),
        ('{"sub":"m-1","exp":true}', "token expired"),
        ('{"sub":"m-1","exp":1' + "0" * 400 + "}", "'exp' claim must be a number"),
        (f'{{"sub":"m-1","exp":{LATER},"nbf":"0"}}', "'nbf' claim must be a number"),
    ],
    ids=["string", "infinity", "nan", "bool", "huge", "string-nbf"],
)
def test_exp_and_nbf_must_be_json_numbers(payload: str, problem: str) -> None:
    auth = Authenticator(settings(jwt_secret=JWT_SECRET))
    with pytest.raises(Unauthorized) as refused:
        auth.verify(signed(payload.encode()))
    assert problem in refused.value.details


async def test_a_huge_exp_is_401_not_500(gateway: GatewayFactory) -> None:
    client = await gateway()
    huge = signed(b'{"sub":"m-1","scope":"sessions:read","exp":1' + b"0" * 400 + b"}")
    response = await client.get("/api/v1/sessions/x", headers={"Authorization": f"Bearer {huge}"})
    assert response.status == 401
    assert (await response.json())["details"] == "token 'exp' claim must be a number of seconds"


def test_numeric_exp_as_integer_or_fraction_is_accepted() -> None:
    auth = Authenticator(settings(jwt_secret=JWT_SECRET))
    for exp in (str(LATER), f"{LATER}.5"):
        token = signed(f'{{"sub":"m-1","exp":{exp}}}'.encode())
        assert auth.verify(token).merchant_id == "m-1"


def test_a_token_with_non_ascii_characters_is_refused_as_malformed() -> None:
    auth = Authenticator(settings(jwt_secret=JWT_SECRET))
    good = auth.issue("m-1", ["sessions:write"], 60)
    for token in (good + "\udcff", "\udcff\udcfe" + good, good.replace(".", "\u2024", 1)):
        with pytest.raises(Unauthorized) as refused:
            auth.verify(token)
        assert refused.value.details == "token malformed"


def test_audience_and_issuer_are_checked_when_configured() -> None:
    auth = Authenticator(settings(jwt_secret=JWT_SECRET, jwt_audience="gw", jwt_issuer="idp"))
    good = jwt.encode(claims(aud="gw", iss="idp"), JWT_SECRET, algorithm="HS256")
    assert auth.verify(good).merchant_id == "m-1"
    for bad in (claims(aud="other", iss="idp"), claims(aud="gw", iss="evil"), claims()):
        with pytest.raises(Unauthorized):
            auth.verify(jwt.encode(bad, JWT_SECRET, algorithm="HS256"))


@pytest.mark.parametrize(("kind", "alg"), [("rsa", "RS256"), ("ec", "ES256")])
def test_public_key_pins_its_algorithm(tmp_path: Path, kind: str, alg: str) -> None:
    priv_path, pub_path, private = write_keys(tmp_path, kind)
    auth = Authenticator(settings(jwt_public_key_file=pub_path))
    assert auth.algorithm == alg
    assert auth.verify(jwt.encode(claims(), private, algorithm=alg)).merchant_id == "m-1"
    # HS/RS confusion: an HMAC token keyed with the public key's PEM must not pass
    forged = _hmac_with_pem(pub_path.read_bytes())
    with pytest.raises(Unauthorized):
        auth.verify(forged)
    minting = Authenticator(settings(jwt_public_key_file=pub_path, jwt_private_key_file=priv_path))
    assert minting.verify(minting.issue("m-2", ["sessions:read"], 60)).merchant_id == "m-2"


def _hmac_with_pem(pem: bytes) -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = b64(hmac.new(pem, header + b"." + payload, hashlib.sha256).digest())
    return (header + b"." + payload + b"." + signature).decode()


def test_production_refuses_to_start_without_a_key() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_JWT_SECRET"):
        Authenticator(settings(env="production"))
    with pytest.raises(SettingsError, match="at least 32"):
        Authenticator(settings(jwt_secret="short"))


def test_sandbox_without_a_key_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    auth = Authenticator(settings())
    assert "DEVELOPMENT secret" in caplog.text
    assert auth.verify(auth.issue("m", ["sessions:read"], 60)).merchant_id == "m"


async def test_scopes_gate_each_route(gateway: GatewayFactory) -> None:
    client = await gateway()
    write_only = headers("scoped", scopes=["sessions:write"])
    created = await client.post("/api/v1/sessions", data=SEED_BYTES, headers=write_only)
    assert created.status == 201
    session_id = (await created.json())["sessionId"]
    denied = await client.get(f"/api/v1/sessions/{session_id}", headers=write_only)
    assert denied.status == 403
    allowed = await client.get(
        f"/api/v1/sessions/{session_id}", headers=headers(None, scopes=["sessions:read"])
    )
    assert allowed.status == 200

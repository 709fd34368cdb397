"""Seeded fuzzing of every input an unauthenticated client controls, written raw to a real socket.

The request line, ``Authorization`` on ``/api/v1/sessions``, ``X-Request-ID`` and
``Content-Type``, and the headers and bodies of ``/api/v1/webhooks/{stripe,adyen,paypal}``
get random and hostile bytes (undecodable UTF-8, NUL, CR/LF, huge numbers, long lines,
surrogates, JSON of the wrong shape). Every answer must come within seconds, never be a 5xx,
and be the JSON error envelope whose ``requestId`` is the ``X-Request-ID`` header: none of
these requests carries a valid credential, so none may succeed either.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.api.conftest import SEED_BYTES, GatewayFactory
from tests.api.test_hostile_bytes import PAYPAL_HEADERS
from tests.rawhttp import RawResponse, exchange, request_bytes

SPECIAL = [
    b"",
    b"\xff\xfe",
    b"\x00",
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b"\t",
    b"\x7f",
    b"\x80",
    "é".encode(),
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"9" * 400,
    b"-1",
    b"1e400",
    b"%00%ff",
    b"eyJhbGciOiJub25lIn0.e30.",
    b"Bearer ",
    b"A" * 9000,
    b"\xef\xbb\xbf",  # UTF-8 byte-order mark
]
hostile = st.one_of(
    st.binary(max_size=80),
    st.sampled_from(SPECIAL),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from(SPECIAL), min_size=2, max_size=4).map(b"".join),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
JSON = (b"Content-Type", b"application/json")


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def adyen_body(draw: st.DrawFn) -> bytes:
    item = draw(st.dictionaries(st.sampled_from(ADYEN_FIELDS), json_values, max_size=6))
    if draw(st.booleans()):
        item["additionalData"] = {"hmacSignature": draw(json_values)}
    return _json({"live": "false", "notificationItems": [{"NotificationRequestItem": item}]})


ADYEN_FIELDS = [
    "pspReference",
    "originalReference",
    "merchantAccountCode",
    "merchantReference",
    "amount",
    "eventCode",
    "success",
    "eventDate",
    "additionalData",
]
bodies = st.one_of(
    hostile,
    json_values.map(_json),
    st.just(b'{"id":"evt_1","type":"checkout.session.completed","data":{"object":{}}}'),
)


TARGETS = [
    "request-line",
    "authorization",
    "request-id",
    "content-type",
    "stripe",
    "adyen",
    "paypal-header",
    "paypal-body",
    "any-header",
]


@st.composite
def hostile_request(draw: st.DrawFn) -> tuple[str, bytes]:
    """One request with a hostile part, and the name of the input it attacks."""
    target = draw(st.sampled_from(TARGETS))
    webhook = draw(st.sampled_from([b"stripe", b"adyen", b"paypal"]))
    path = b"/api/v1/webhooks/" + webhook
    if target == "request-line":
        method = draw(st.one_of(hostile, st.sampled_from([b"GET", b"POST", b"PRI", b"CONNECT"])))
        return target, method + b" " + draw(hostile) + b" HTTP/1.1\r\n\r\n"
    if target == "authorization":
        value = draw(st.one_of(hostile, hostile.map(lambda v: b"Bearer " + v)))
        hdrs = [(b"Authorization", value), JSON, (b"Idempotency-Key", b"fuzz-1")]
        return target, request_bytes(b"POST", b"/api/v1/sessions", hdrs, SEED_BYTES)
    if target == "request-id":
        hdrs = [(b"X-Request-ID", draw(hostile)), JSON]
        return target, request_bytes(b"POST", path, hdrs, draw(bodies))
    if target == "content-type":
        hdrs = [(b"Content-Type", draw(hostile))]
        return target, request_bytes(b"POST", path, hdrs, draw(bodies))
    if target == "stripe":
        now = str(int(time.time())).encode()
        signature = draw(
            st.one_of(
                hostile,
                hostile.map(lambda v: b"t=" + now + b",v1=" + v),
                hostile.map(lambda v: b"t=" + v + b",v1=" + b"a" * 64),
            )
        )
        hdrs = [(b"Stripe-Signature", signature), JSON]
        return target, request_bytes(b"POST", b"/api/v1/webhooks/stripe", hdrs, draw(bodies))
    if target == "adyen":
        body = draw(st.one_of(adyen_body(), bodies))
        return target, request_bytes(b"POST", b"/api/v1/webhooks/adyen", [JSON], body)
    if target in ("paypal-header", "paypal-body"):
        values = dict(PAYPAL_HEADERS)
        body = b'{"id":"WH-1","event_type":"CHECKOUT.ORDER.APPROVED","resource":{}}'
        if target == "paypal-header":
            values[draw(st.sampled_from(list(PAYPAL_HEADERS)))] = draw(hostile)
        else:
            body = draw(bodies)
        hdrs = [*values.items(), JSON]
        return target, request_bytes(b"POST", b"/api/v1/webhooks/paypal", hdrs, body)
    name = draw(st.one_of(hostile, st.sampled_from([b"Host", b"Content-Length", b"Expect"])))
    hdrs = [(name, draw(hostile)), JSON]
    return target, request_bytes(b"POST", path, hdrs, draw(bodies))


def check(target: str, raw: bytes, answer: RawResponse) -> None:
    where = f"{target}: {raw[:300]!r} -> {answer.status} {answer.body[:300]!r}"
    assert 400 <= answer.status < 500, where
    assert answer.headers.get("content-type", "").startswith("application/json"), where
    body = orjson.loads(answer.body)
    assert body["statusCode"] == answer.status, where
    assert isinstance(body["message"], str | list), where
    assert body["requestId"] == answer.headers["x-request-id"], where


@pytest.mark.timeout(60)
async def test_unauthenticated_inputs_never_get_a_5xx_or_a_bare_answer(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    loop = asyncio.get_running_loop()
    port = client.server.port
    seen: dict[str, int] = {}

    @settings(
        max_examples=1500,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_request())
    def attack(case: tuple[str, bytes]) -> None:
        target, raw = case
        seen[target] = seen.get(target, 0) + 1
        future = asyncio.run_coroutine_threadsafe(exchange("127.0.0.1", port, raw), loop)
        check(target, raw, future.result(timeout=10))

    began = time.monotonic()
    await asyncio.to_thread(attack)
    assert time.monotonic() - began < 20
    assert set(seen) == set(TARGETS)
    assert min(seen.values()) >= 30, seen  # every input was attacked

"""Hostile bytes sent without credentials, written raw to a real socket: each one gets a defined
answer in the error envelope with an ``X-Request-ID``, never a 500, and the log never holds
the bytes of a header the HTTP parser refused."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import pytest

from tests.api.conftest import SEED_BYTES, GatewayFactory, token
from tests.rawhttp import RawResponse, exchange, read_answer, request_bytes

JSON = (b"Content-Type", b"application/json")
BAD_METHOD = "Malformed request line: unknown method"


def assert_envelope(answer: RawResponse, status: int) -> dict[str, Any]:
    """``answer`` is the JSON envelope for ``status`` and carries its request id."""
    assert answer.status == status, answer
    assert answer.headers["content-type"].startswith("application/json"), answer
    body: dict[str, Any] = orjson.loads(answer.body)
    assert body["statusCode"] == status
    assert body["requestId"] == answer.headers["x-request-id"]
    return body


async def send(client: Any, raw: bytes) -> RawResponse:
    return await exchange("127.0.0.1", client.server.port, raw)


async def test_a_bearer_token_with_non_utf8_bytes_is_401(gateway: GatewayFactory) -> None:
    client = await gateway()
    for value in (b"Bearer \xff\xfe.e30.sig", b"Bearer eyJ\xc3\x28.e30.x", "Bearer ü".encode()):
        hdrs = [(b"Authorization", value), JSON, (b"Idempotency-Key", b"k-1")]
        answer = await send(client, request_bytes(b"POST", b"/api/v1/sessions", hdrs, SEED_BYTES))
        body = assert_envelope(answer, 401)
        assert body["details"] == "token malformed"


def _stripe(signature: bytes) -> bytes:
    hdrs = [(b"Stripe-Signature", signature), JSON]
    return request_bytes(b"POST", b"/api/v1/webhooks/stripe", hdrs, b'{"id":"evt_1"}')


@pytest.mark.parametrize(
    "signature",
    [
        f"t={int(time.time())},v1=".encode() + "é".encode(),  # non-ASCII in the hex compare
        b"t=" + b"9" * 400 + b",v1=abc",  # an int too large to compare with the clock
        b"t=" + b"9" * 5000 + b",v1=abc",  # past int()'s digit limit
        ("t=" + "\u0661" * 10 + ",v1=ab").encode(),  # Arabic-Indic digits int() would accept
        f"t={int(time.time())},v1=\xff\xfe".encode("latin-1"),
        b"t=,v1=",
        b",,,=,=",
    ],
)
async def test_a_malformed_stripe_signature_is_400(
    gateway: GatewayFactory, signature: bytes
) -> None:
    client = await gateway()
    body = assert_envelope(await send(client, _stripe(signature)), 400)
    assert body["message"] == "Webhook verification failed"


PAYPAL_HEADERS = {
    b"PAYPAL-AUTH-ALGO": b"SHA256withRSA",
    b"PAYPAL-CERT-URL": b"https://api.sandbox.paypal.com/v1/notifications/certs/CERT-1",
    b"PAYPAL-TRANSMISSION-ID": b"69cd13f0-d67a-11e5-baa3-778b53f4ae55",
    b"PAYPAL-TRANSMISSION-SIG": b"bm90IGEgc2lnbmF0dXJl",
    b"PAYPAL-TRANSMISSION-TIME": b"2026-12-01T04:00:00Z",
}


@pytest.mark.parametrize("name", list(PAYPAL_HEADERS))
async def test_a_paypal_transmission_header_with_raw_bytes_is_400(
    gateway: GatewayFactory, name: bytes
) -> None:
    client = await gateway()
    hdrs = [*{**PAYPAL_HEADERS, name: b"\xff\xfe"}.items(), JSON]
    raw = request_bytes(b"POST", b"/api/v1/webhooks/paypal", hdrs, b'{"id":"WH-1"}')
    body = assert_envelope(await send(client, raw), 400)
    assert body["message"] == "Webhook verification failed"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"G\x01T /healthz HTTP/1.1\r\nHost: g\r\n\r\n", BAD_METHOD),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", BAD_METHOD),  # TLS hello
        (
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: g\r\n\r\n",
            "Request line or header too long",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9."
            + b"A" * 9000
            + b"\r\n\r\n",
            "Request line or header too long",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nBad Header\x01: eyJx\r\n\r\n",
            "Malformed HTTP request: Invalid header token",
        ),
        (
            b"POST /api/v1/webhooks/stripe HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n"
            b"\r\nzz\r\neyJ\r\n0\r\n\r\n",
            "Malformed HTTP request: Invalid character in chunk size",
        ),
        (b"GET /\xffeyJ HTTP/1.1\r\n\r\n", "Malformed request target"),
        (b"GET / HTTP/9.1\r\nX: eyJ\r\n\r\n", "Malformed request line"),
        (b"CONNECT \r\n\r\n", "Malformed request line"),  # aiohttp: no URL, no answer
        (b"CONNECT \r\nX: eyJ\r\n\r\n", "Malformed request line"),
    ],
    ids=[
        "bad-method",
        "tls-hello",
        "long-line",
        "long-token",
        "bad-header",
        "bad-chunk",
        "url",
        "version",
        "connect",
        "connect-header",
    ],
)
async def test_requests_the_http_parser_refuses_get_the_envelope_and_leave_no_bytes_in_the_log(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture, raw: bytes, message: str
) -> None:
    client = await gateway()
    caplog.set_level(logging.DEBUG)
    body = assert_envelope(await send(client, raw), 400)
    assert body["error"] == "Bad Request"
    assert body["message"] == message
    refused = [r for r in caplog.records if r.getMessage() == "request refused by the HTTP server"]
    assert [(r.name, r.__dict__["request_id"], r.__dict__["status"]) for r in refused] == [
        ("gateway.access", body["requestId"], 400)
    ]
    logged = "\n".join(
        f"{r.getMessage()} {r.exc_info[1] if r.exc_info else ''} {r.__dict__}"
        for r in caplog.records
    )
    assert "eyJ" not in logged
    assert "aaaaaaaa" not in logged
    assert "aiohttp.server" not in {r.name for r in caplog.records}


async def test_a_json_body_that_is_not_utf8_is_400(gateway: GatewayFactory) -> None:
    client = await gateway()
    text = SEED_BYTES.decode()
    bearer = f"Bearer {token()}".encode()
    for encoded, problem in [
        (text.encode("utf-16"), "JSON must be UTF-8, not UTF-16 or UTF-32"),
        (text.encode("utf-16-be"), "JSON must be UTF-8, not UTF-16 or UTF-32"),
        (text.encode("utf-32"), "JSON must be UTF-8, not UTF-16 or UTF-32"),
        (text.encode("utf-8-sig"), "JSON must be UTF-8 without a byte-order mark"),
        (SEED_BYTES.replace(b"Jane", b"J\xe4ne"), "JSON must be UTF-8: invalid byte at offset"),
    ]:
        hdrs = [(b"Authorization", bearer), JSON, (b"Idempotency-Key", b"k-utf")]
        answer = await send(client, request_bytes(b"POST", b"/api/v1/sessions", hdrs, encoded))
        body = assert_envelope(answer, 400)
        assert len(body["message"]) == 1
        assert problem in body["message"][0]


@pytest.mark.parametrize("expect", [b"!", b"\x80", b"<script>", b"100-continue-please"])
async def test_an_unknown_expectation_is_417_in_the_envelope(
    gateway: GatewayFactory, expect: bytes
) -> None:
    client = await gateway()
    for path in (b"/api/v1/webhooks/stripe", b"/no/such/route"):
        hdrs = [(b"Expect", expect), (b"X-Request-ID", b"req-expect-1"), JSON]
        answer = await send(client, request_bytes(b"POST", path, hdrs, b"{}"))
        body = assert_envelope(answer, 417)
        assert body["requestId"] == "req-expect-1"
        assert expect.decode("latin-1") not in body["message"]


async def test_expect_100_continue_still_works(gateway: GatewayFactory) -> None:
    client = await gateway()
    hdrs = [(b"Expect", b"100-Continue"), JSON]
    answer = await send(client, request_bytes(b"POST", b"/api/v1/webhooks/stripe", hdrs, b"{}"))
    body = assert_envelope(answer, 400)  # past the expectation, to the webhook's own check
    assert body["message"] == "Webhook verification failed"


async def send_split(client: Any, raw: bytes) -> RawResponse:
    """``raw`` with its body sent after the head has been parsed (the handler reads it)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(head + b"\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(body)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), 5)
    finally:
        writer.close()


@pytest.mark.parametrize("split", [False, True], ids=["one-packet", "body-later"])
@pytest.mark.parametrize("encoding", [b"deflate", b"gzip"])
@pytest.mark.parametrize("path", [b"/api/v1/webhooks/stripe", b"/api/v1/webhooks/adyen"])
async def test_a_body_that_does_not_decode_as_its_content_encoding_is_400(
    gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
    encoding: bytes,
    path: bytes,
    split: bool,
) -> None:
    client = await gateway()
    hdrs = [(b"Content-Encoding", encoding), (b"Stripe-Signature", b"t=1,v1=ab"), JSON]
    raw = request_bytes(b"POST", path, hdrs, b"not compressed at all")
    answer = await (send_split(client, raw) if split else send(client, raw))
    body = assert_envelope(answer, 400)
    assert body["message"] == "Malformed request body"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("split", [False, True], ids=["one-packet", "body-later"])
@pytest.mark.parametrize("bearer", [f"Bearer {token()}".encode(), b"Bearer x"], ids=["ok", "bad"])
async def test_a_create_whose_body_does_not_decode_is_400_or_refused_first(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture, split: bool, bearer: bytes
) -> None:
    client = await gateway()
    hdrs = [(b"Authorization", bearer), JSON, (b"Idempotency-Key", b"k-deflate")]
    hdrs.append((b"Content-Encoding", b"deflate"))
    raw = request_bytes(b"POST", b"/api/v1/sessions", hdrs, b"\x00\x01\x02")
    answer = await (send_split(client, raw) if split else send(client, raw))
    if bearer == b"Bearer x" and split:
        # refused before the body is read; aiohttp then drains the body, which fails to decode
        assert_envelope(answer, 401)
        await asyncio.sleep(0.2)
    else:
        assert assert_envelope(answer, 400)["message"] == "Malformed request body"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "rest",
    [b"2\r\n{}\r\nzz\r\n", b"2\r\n{}\r\n2\r\n{}XX"],
    ids=["bad-chunk-size", "chunk-overrun"],
)
async def test_a_chunked_body_broken_after_the_handler_started_reading_is_400_at_once(
    gateway: GatewayFactory, rest: bytes
) -> None:
    # aiohttp queued the parser's failure behind the request and the handler waited on its
    # body for as long as the client kept the connection open, past every read deadline
    client = await gateway()
    head = (
        b"POST /api/v1/webhooks/stripe HTTP/1.1\r\nHost: g\r\nStripe-Signature: t=1,v1=ab\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    answer = await send_split(client, head + rest)
    assert assert_envelope(answer, 400)["message"] == "Malformed request body"


@pytest.mark.parametrize("path", [b"/api/v1/webhooks/stripe", b"/api/v1/sessions"])
async def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(
    gateway: GatewayFactory, path: bytes
) -> None:
    client = await gateway()
    raw = (
        b"POST " + path + b" HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000000\r\n\r\n{}"
    )
    body = assert_envelope(await send(client, raw), 413)
    assert body["message"] == "Request body too large"

"""``GET /api/v1/sessions?orderReference=...``: a merchant's sessions of an order, over HTTP."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import jsonschema
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.api.session_query import decode_cursor
from gateway.domain.session import utcnow
from gateway.store.base import RecordStore
from tests.api.conftest import GatewayFactory, headers, seed
from tests.api.test_error_bodies import envelope
from tests.rawhttp import RawResponse, exchange, request_bytes

Client = TestClient[Any, Any]
UUID = "0b7d2a8e-3d4f-5a6b-8c9d-0e1f2a3b4c5d"

#: every record store the endpoint runs on
STORES = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


async def create(client: Client, key: str, ref: str, merchant: str = "merchant-1") -> str:
    answer = await client.post(
        "/api/v1/sessions", json=seed(orderReference=ref), headers=headers(key, merchant=merchant)
    )
    assert answer.status == 201, await answer.text()
    session_id: str = (await answer.json())["sessionId"]
    return session_id


async def find(
    client: Client, merchant: str = "merchant-1", scopes: list[str] | None = None, **params: Any
) -> aiohttp.ClientResponse:
    return await client.get(
        "/api/v1/sessions",
        params=params,
        headers=headers(None, merchant=merchant, scopes=scopes),
    )


async def page(client: Client, merchant: str = "merchant-1", **params: Any) -> dict[str, Any]:
    answer = await find(client, merchant, **params)
    assert answer.status == 200, await answer.text()
    body: dict[str, Any] = await answer.json()
    assert set(body) == {"data", "nextCursor"}
    return body


async def all_pages(client: Client, ref: str, limit: int, merchant: str = "merchant-1") -> Any:
    pages: list[list[str]] = []
    params: dict[str, Any] = {"orderReference": ref, "limit": limit}
    while True:
        body = await page(client, merchant, **params)
        pages.append([view["sessionId"] for view in body["data"]])
        if body["nextCursor"] is None:
            return pages
        params["cursor"] = body["nextCursor"]


@pytest.mark.parametrize("kind", STORES)
async def test_pages_newest_first_each_session_as_get_reads_it(
    gateway: GatewayFactory, store_factory: Any, kind: str
) -> None:
    client = await gateway(store=await store_factory(kind), order_reference_guard=False)
    created = [await create(client, f"k-{i}", "ORD-FIND") for i in range(5)]
    await create(client, "k-other-order", "ORD-FIND-2")
    pages = await all_pages(client, "ORD-FIND", limit=2)
    assert [len(p) for p in pages] == [2, 2, 1]
    listed = [sid for p in pages for sid in p]
    assert sorted(listed) == sorted(created)  # every one, no duplicates
    views = (await page(client, orderReference="ORD-FIND", limit=100))["data"]
    assert [v["sessionId"] for v in views] == listed
    for view in views:
        single = await client.get(f"/api/v1/sessions/{view['sessionId']}", headers=headers(None))
        assert view == await single.json()
    assert listed == created[::-1]  # created one after the other: newest first
    # the default page size is 20; an exact fit ends with a null cursor
    assert len((await page(client, orderReference="ORD-FIND"))["data"]) == 5
    assert (await page(client, orderReference="ORD-FIND", limit=5))["nextCursor"] is None
    assert (await page(client, orderReference="ORD-NONE")) == {"data": [], "nextCursor": None}


async def test_a_cursor_names_the_last_session_of_its_page(gateway: GatewayFactory) -> None:
    client = await gateway(order_reference_guard=False)
    for i in range(3):
        await create(client, f"k-{i}", "ORD-C")
    first = await page(client, orderReference="ORD-C", limit=2)
    position = decode_cursor(first["nextCursor"])
    assert position.session_id == first["data"][-1]["sessionId"]
    assert position.created_at.isoformat().startswith(first["data"][-1]["createdAt"][:23])


async def test_other_merchants_sessions_are_invisible(gateway: GatewayFactory) -> None:
    client = await gateway(order_reference_guard=False)
    mine = await create(client, "k-mine", "ORD-SHARED")
    theirs = {await create(client, f"k-theirs-{i}", "ORD-SHARED", "merchant-2") for i in range(2)}
    assert [v["sessionId"] for v in (await page(client, orderReference="ORD-SHARED"))["data"]] == [
        mine
    ]
    other = await page(client, "merchant-2", orderReference="ORD-SHARED", limit=1)
    assert {v["sessionId"] for v in other["data"]} < theirs
    # another merchant's cursor only says where to go on in the caller's own sessions
    followed = await page(client, orderReference="ORD-SHARED", cursor=other["nextCursor"])
    assert all(v["sessionId"] not in theirs for v in followed["data"])
    assert (await page(client, "merchant-3", orderReference="ORD-SHARED"))["data"] == []


async def test_the_read_scope_is_required(gateway: GatewayFactory) -> None:
    client = await gateway()
    await create(client, "k-1", "ORD-SCOPE")
    denied = await find(client, scopes=["sessions:write"], orderReference="ORD-SCOPE")
    body = await envelope(denied, 403)
    assert body["error"] == "Forbidden"
    assert body["code"] == 403
    anonymous = await client.get("/api/v1/sessions", params={"orderReference": "ORD-SCOPE"})
    assert (await envelope(anonymous, 401))["error"] == "Unauthorized"
    allowed = await find(client, scopes=["sessions:read"], orderReference="ORD-SCOPE")
    assert allowed.status == 200


@pytest.mark.parametrize("kind", STORES)
async def test_a_listed_session_expires_on_read_like_get(
    gateway: GatewayFactory, store_factory: Any, kind: str
) -> None:
    store: RecordStore = await store_factory(kind)
    client = await gateway(store=store)
    session_id = await create(client, "k-1", "ORD-EXP")
    record = await store.get_session(session_id)
    assert record is not None
    past = record.model_copy(update={"expiresAt": utcnow() - timedelta(seconds=1)})
    assert await store.update_session(past, expected_version=record.version)
    [view] = (await page(client, orderReference="ORD-EXP"))["data"]
    assert view["status"] == "EXPIRED"
    single = await client.get(f"/api/v1/sessions/{session_id}", headers=headers(None))
    assert view == await single.json()


async def test_with_the_order_guard_a_cancelled_order_lists_both_sessions(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    first = await create(client, "k-1", "ORD-AGAIN")
    cancel = await client.post(
        f"/api/v1/sessions/{first}/cancel",
        json={"cancellationReason": "abandoned"},
        headers=headers(None),
    )
    assert cancel.status == 200, await cancel.text()
    assert (await cancel.json())["payableUntil"] is None  # expired at the provider: no hold
    second = await create(client, "k-2", "ORD-AGAIN")
    views = (await page(client, orderReference="ORD-AGAIN"))["data"]
    assert [(v["sessionId"], v["status"]) for v in views] == [
        (second, "PENDING"),
        (first, "CANCELLED"),
    ]


def cursor(raw: Any) -> str:
    data = raw if isinstance(raw, bytes) else orjson.dumps(raw)
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


HOSTILE: list[tuple[str, str]] = [
    ("", "orderReference: Field required"),
    ("orderReference=", "orderReference: String should have at least 1 character"),
    ("orderReference=" + "x" * 129, "orderReference: String should have at most 128 characters"),
    ("orderReference=A&limit=0", "limit: Input should be greater than or equal to 1"),
    ("orderReference=A&limit=101", "limit: Input should be less than or equal to 100"),
    ("orderReference=A&limit=99999999999999999999", "limit: must be a whole number"),
    ("orderReference=A&limit=", "limit: must be a whole number"),
    ("orderReference=A&limit=-1", "limit: must be a whole number"),
    ("orderReference=A&limit=1.0", "limit: must be a whole number"),
    ("orderReference=A&limit=%2B5", "limit: must be a whole number"),
    ("orderReference=A&limit=1_0", "limit: must be a whole number"),
    ("orderReference=A&limit=%EF%BC%92", "limit: must be a whole number"),
    ("orderReference=A&limit=2&limit=3", "limit: must be given once"),
    ("orderReference=A&orderReference=B", "orderReference: must be given once"),
    ("orderReference=A&offset=20", "offset: unknown field"),
    ("orderReference=A&cursor=", "cursor: not a cursor"),
    ("orderReference=A&cursor=%21%21%21", "cursor: not a cursor"),
    ("orderReference=A&cursor=" + "A" * 201, "cursor: not a cursor"),
    ("orderReference=A&cursor=YWJj%3D", "cursor: not a cursor"),  # padding, "abc"
    ("orderReference=A&cursor=" + cursor(b"\xff\xfe"), "cursor: not a cursor"),
    ("orderReference=A&cursor=" + cursor(b"[1,2"), "cursor: not a cursor"),
    ("orderReference=A&cursor=" + cursor({"a": 1}), "cursor: not a cursor"),
    ("orderReference=A&cursor=" + cursor(["2026-01-01T00:00:00Z"]), "cursor: not a cursor"),
    ("orderReference=A&cursor=" + cursor([1, UUID]), "cursor: not a cursor"),
    ("orderReference=A&cursor=" + cursor(["2026-01-01T00:00:00", UUID]), "cursor: not a cursor"),
    ("orderReference=A&cursor=" + cursor(["yesterday", UUID]), "cursor: not a cursor"),
    ("orderReference=A&cursor=" + cursor(["0001-01-01T00:00:00+14:00", UUID]), "cursor: not a"),
    ("orderReference=A&cursor=" + cursor(["9999-12-31T23:59:59-14:00", UUID]), "cursor: not a"),
    ("orderReference=A&cursor=" + cursor(["2026-01-01T00:00:00Z", "s_1"]), "cursor: not a"),
    ("orderReference=A&cursor=" + cursor(["2026-01-01T00:00:00Z", UUID.upper()]), "cursor: not"),
    ("orderReference=A&cursor=" + cursor(["2026-01-01T00:00:00Z", UUID, 3]), "cursor: not a"),
    ("orderReference=A&cursor=" + cursor(["2026-01-01T00:00:00Z", None]), "cursor: not a cursor"),
]


@pytest.mark.parametrize(("query", "problem"), HOSTILE, ids=[q[:60] for q, _ in HOSTILE])
async def test_bad_parameters_are_a_400_listing_the_problem(
    gateway: GatewayFactory, query: str, problem: str
) -> None:
    client = await gateway()
    target = "/api/v1/sessions" + ("?" + query if query else "")
    answer = await raw_get(client, target)
    assert answer.status == 400, answer.body
    body = orjson.loads(answer.body)
    assert body["error"] == "Bad Request"
    assert body["statusCode"] == 400
    assert body["requestId"] == answer.headers["x-request-id"]
    assert isinstance(body["message"], list)
    assert any(message.startswith(problem) for message in body["message"]), body["message"]


async def raw_get(client: Client, target: str) -> RawResponse:
    """GET ``target`` byte for byte as written (no client re-encodes its query)."""
    assert client.port is not None
    auth = headers(None)["Authorization"].encode()
    raw = request_bytes(b"GET", target.encode(), [(b"Authorization", auth)])
    return await exchange(client.host, client.port, raw)


async def test_every_problem_is_listed_at_once(gateway: GatewayFactory) -> None:
    client = await gateway()
    answer = await find(client, limit="x", cursor="???", extra="1")
    body = await envelope(answer, 400)
    assert sorted(body["message"]) == [
        "cursor: not a cursor this API issued (use nextCursor as given)",
        "extra: unknown field",
        "limit: must be a whole number",
        "orderReference: Field required",
    ]


ODD_REFS = [
    "%FF%FE",
    "%00",
    "a%00b",
    "%ED%A0%80",  # a lone surrogate, UTF-8 encoded
    "%C0%80",  # an overlong NUL
    "%F4%90%80%80",  # past U+10FFFF
    "%01%22x%22",  # the PostgreSQL store's escape mark, then a JSON string
    "a%2Fb%3Fc%26d",
    "%F0%9F%92%B3",
    "%7B%7D%3A%25*",
    "ORD%20001",
]


@pytest.mark.parametrize("kind", STORES)
async def test_odd_order_references_are_looked_up_never_a_500(
    gateway: GatewayFactory, store_factory: Any, kind: str
) -> None:
    client = await gateway(store=await store_factory(kind))
    for ref in ODD_REFS:
        answer = await raw_get(client, f"/api/v1/sessions?orderReference={ref}")
        assert answer.status == 200, (ref, answer.body)
        assert orjson.loads(answer.body) == {"data": [], "nextCursor": None}, ref


@pytest.mark.parametrize("kind", STORES)
async def test_hostile_order_references_find_exactly_their_own_session(
    gateway: GatewayFactory, store_factory: Any, kind: str
) -> None:
    client = await gateway(store=await store_factory(kind))
    refs = [
        "a\x00b",
        "\x00",
        '\x01"a\\u0000b"',  # what the PostgreSQL store stores for "a\x00b"
        "\U0001f4b3" * 128,  # the longest: 128 characters, 512 bytes
        "ORD-\u202e\ufeff-\U0010ffff",
    ]
    created = {ref: await create(client, f"k-{i}", ref) for i, ref in enumerate(refs)}
    assert len(set(created.values())) == len(refs)
    for ref, session_id in created.items():
        views = (await page(client, orderReference=ref))["data"]
        assert [(v["sessionId"], v["orderReference"]) for v in views] == [(session_id, ref)]
    too_long = await find(client, orderReference="\U0001f4b3" * 129)
    assert (await envelope(too_long, 400))["message"] == [
        "orderReference: String should have at most 128 characters"
    ]


@pytest.mark.parametrize("kind", STORES)
async def test_cursors_at_the_ends_of_time_are_answered(
    gateway: GatewayFactory, store_factory: Any, kind: str
) -> None:
    client = await gateway(store=await store_factory(kind))
    session_id = await create(client, "k-1", "ORD-ENDS")
    earliest = cursor(["0001-01-01T00:00:00+00:00", UUID])
    latest = cursor(["9999-12-31T23:59:59.999999+00:00", "ffffffff-ffff-ffff-ffff-ffffffffffff"])
    assert (await page(client, orderReference="ORD-ENDS", cursor=earliest))["data"] == []
    after_latest = await page(client, orderReference="ORD-ENDS", cursor=latest, limit=1)
    assert [v["sessionId"] for v in after_latest["data"]] == [session_id]
    assert after_latest["nextCursor"] is None


@pytest.mark.postgres
async def test_bad_parameters_are_a_400_before_the_postgres_store(
    gateway: GatewayFactory, store_factory: Any
) -> None:
    client = await gateway(store=await store_factory("postgres"))
    for query, problem in HOSTILE:
        answer = await raw_get(client, "/api/v1/sessions" + ("?" + query if query else ""))
        assert answer.status == 400, (query, answer.body)
        body = orjson.loads(answer.body)
        assert set(body) == {"error", "message", "statusCode", "requestId"}, body
        assert any(m.startswith(problem) for m in body["message"]), (query, body)


async def test_an_order_reference_with_reserved_characters_round_trips(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    ref = "ORD/2024?a=1&b=%2F #💳"
    session_id = await create(client, "k-odd", ref)
    body = await page(client, orderReference=ref)
    assert [v["sessionId"] for v in body["data"]] == [session_id]
    assert quote(ref) != ref  # the client had to encode it


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_the_store_down_is_a_503(gateway: GatewayFactory, kind: str) -> None:
    from gateway.store.postgres import PostgresStore
    from tests.redis_stores import redis_store
    from tests.store.test_redis_specific import closed_port

    port = closed_port()
    store: RecordStore = (
        redis_store(f"redis://127.0.0.1:{port}/0", "gw:")
        if kind == "redis"
        else PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/gateway")
    )
    client = await gateway(store=store)
    answer = await find(client, orderReference="ORD-1")
    assert (await envelope(answer, 503))["error"] == "Service Unavailable"


async def test_a_real_page_and_its_parameters_match_the_openapi_document(
    gateway: GatewayFactory,
) -> None:
    client = await gateway(order_reference_guard=False)
    for i in range(2):
        await create(client, f"k-{i}", "ORD-DOC")
    doc = await (await client.get("/api/v1/openapi.json")).json()
    operation = doc["paths"]["/api/v1/sessions"]["get"]
    assert operation["x-scope"] == "sessions:read"
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert set(parameters) == {"orderReference", "limit", "cursor"}
    assert parameters["orderReference"]["required"] is True
    assert parameters["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "default": 20,
    }
    schema = {"$ref": "#/components/schemas/SessionPage", "components": doc["components"]}
    first = await page(client, orderReference="ORD-DOC", limit=1)
    assert first["nextCursor"] is not None
    jsonschema.validate(first, schema)
    last = await page(client, orderReference="ORD-DOC", limit=1, cursor=first["nextCursor"])
    assert last["nextCursor"] is None
    jsonschema.validate(last, schema)
    error = await find(client, orderReference="ORD-DOC", limit=0)
    jsonschema.validate(
        await error.json(),
        {"$ref": "#/components/schemas/ErrorBody", "components": doc["components"]},
    )

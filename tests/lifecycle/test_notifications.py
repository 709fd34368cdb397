"""Merchant notifications: signatures, retries with backoff, dead letters, the merchants file,
and a Redis outbox that outlives the gateway process that filled it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from gateway.app import create_app
from gateway.appkeys import SETTINGS
from gateway.notifications import verify_signature
from gateway.notifications.delivery import DeliveryPolicy, DeliveryWorker
from gateway.notifications.merchants import MerchantDirectory, MerchantWebhook, load_merchants
from gateway.notifications.signing import sign, signature_header
from gateway.settings import SettingsError
from gateway.store.base import OutboxItem, RecordStore
from tests.conftest import StoreFactory
from tests.lifecycle.conftest import MERCHANT_SECRET, EnvFactory, start_receiver
from tests.lifecycle.test_loop import wait_for

_T = TypeVar("_T")

BODY = b'{"id":"evt_1","type":"payment_session.updated"}'


# signatures -----------------------------------------------------------------------------------


def test_verify_signature_accepts_only_the_signed_fresh_body() -> None:
    now = 1_800_000_000
    header = signature_header([MERCHANT_SECRET], now, BODY)
    assert header == f"t={now},v1={sign(MERCHANT_SECRET, now, BODY)}"
    assert verify_signature(MERCHANT_SECRET, header, BODY, now=now + 10)
    assert not verify_signature(MERCHANT_SECRET, header, BODY + b" ", now=now)  # tampered
    assert not verify_signature(MERCHANT_SECRET, header, BODY, now=now + 301)  # stale
    assert not verify_signature(MERCHANT_SECRET, header, BODY, now=now - 301)  # from the future
    assert not verify_signature("another-secret-0123456789abc", header, BODY, now=now)
    for broken in ("", "t=abc,v1=00", f"t={now}", "v1=00", f"t={now},v1="):
        assert not verify_signature(MERCHANT_SECRET, broken, BODY, now=now)


def test_during_a_rotation_both_secrets_sign() -> None:
    old, new = "old-secret-0123456789abcdefgh", "new-secret-0123456789abcdefgh"
    header = signature_header([new, old], 100, BODY)
    assert verify_signature(new, header, BODY, now=100)
    assert verify_signature(old, header, BODY, now=100)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = DeliveryPolicy(backoff_base_s=2.0, backoff_max_s=60.0)
    assert policy.backoff(1, 0.0) == 1.0
    assert policy.backoff(1, 0.999999) == pytest.approx(2.0, abs=1e-5)
    assert policy.backoff(3, 0.0) == 4.0
    assert policy.backoff(10, 0.0) == 30.0
    assert policy.backoff(10, 0.999999) == pytest.approx(60.0, abs=1e-4)


# delivery -------------------------------------------------------------------------------------


async def test_a_failing_receiver_gets_the_event_once_it_recovers(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe", fail_first=3)
    created = await env.create()
    events = await wait_for(lambda: env.receiver.of_session(created["sessionId"]))
    assert [e["type"] for e in events] == ["payment_session.created"]
    assert env.receiver.calls == 4
    headers, body = env.receiver.events[0]
    assert headers["Gateway-Event-Type"] == "payment_session.created"
    assert headers["Gateway-Event-Id"] == json.loads(body)["id"]
    payload = events[0]["data"]["payment_session"]
    assert payload["status"] == "PENDING"
    assert payload["amount"] == {"total": "140.76", "shipping": "9.95", "tax": "11.81"}
    assert "customer" not in payload  # no personal data in notifications
    # the worker marks the item done only after the receiver's answer is back, so the
    # receiver can hold the event a moment before the outbox is empty
    await until_async(env.store.outbox_backlog, lambda backlog: backlog == 0)


async def until_async(
    read: Callable[[], Awaitable[_T]], ok: Callable[[_T], bool], timeout: float = 5.0
) -> _T:
    """``await read()`` until ``ok`` holds for its value; fails with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {timeout} s"
        await asyncio.sleep(0.02)


def _directory(url: str) -> MerchantDirectory:
    hook = MerchantWebhook(
        "merchant-1",
        url,
        (MERCHANT_SECRET,),
        frozenset({"payment_session.created", "payment_session.updated"}),
    )
    return MerchantDirectory({"merchant-1": hook})


def _item(item_id: str) -> OutboxItem:
    return OutboxItem(item_id, "merchant-1", "payment_session.updated", BODY, time.time())


async def test_dead_letter_after_the_last_attempt(aiohttp_server: Any, store: RecordStore) -> None:
    receiver = await start_receiver(aiohttp_server, fail_first=1_000)
    policy = DeliveryPolicy(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02)
    async with aiohttp.ClientSession() as http:
        worker = DeliveryWorker(store, _directory(f"{receiver.url}/hooks"), http, policy)
        await store.outbox_add([_item("doomed")], due=time.time())
        for _ in range(200):
            await worker.run_once()
            if await store.outbox_dead_letters():
                break
            await asyncio.sleep(0.01)
    [dead] = await store.outbox_dead_letters()
    assert (dead.id, dead.attempts, dead.last_error) == ("doomed", 3, "http_5xx")
    assert dead.body == BODY
    assert receiver.calls == 3
    assert await store.outbox_backlog() == 0


async def test_unreachable_receiver_is_retried_not_lost(store: RecordStore) -> None:
    url = f"http://127.0.0.1:{unused_port()}/hooks"  # nothing listens
    policy = DeliveryPolicy(max_attempts=5, backoff_base_s=60, backoff_max_s=60)
    async with aiohttp.ClientSession() as http:
        worker = DeliveryWorker(store, _directory(url), http, policy, rng=lambda: 0.0)
        await store.outbox_add([_item("later")], due=time.time())
        assert await worker.run_once() == 1
    assert await store.outbox_backlog() == 1
    assert await store.outbox_claim(now=time.time() + 29, lease_s=1, limit=5) == []
    [again] = await store.outbox_claim(now=time.time() + 31, lease_s=1, limit=5)
    assert (again.attempts, again.last_error) == (1, "connection_error")


async def test_two_workers_deliver_each_item_once(aiohttp_server: Any, store: RecordStore) -> None:
    receiver = await start_receiver(aiohttp_server)
    policy = DeliveryPolicy(batch_size=5)
    await store.outbox_add([_item(f"n{i}") for i in range(20)], due=time.time())
    async with aiohttp.ClientSession() as http:
        workers = [
            DeliveryWorker(store, _directory(f"{receiver.url}/hooks"), http, policy)
            for _ in range(2)
        ]
        for _ in range(10):
            await asyncio.gather(*(w.run_once() for w in workers))
    ids = [h["Gateway-Event-Id"] for h, _ in receiver.events]
    assert sorted(ids) == sorted(f"n{i}" for i in range(20))


@pytest.mark.redis
async def test_redis_outbox_is_delivered_by_the_next_gateway(
    store_factory: StoreFactory, lifecycle_env: EnvFactory, aiohttp_client: Any
) -> None:
    first_store = await store_factory("redis")
    env = await lifecycle_env("stripe", store=first_store, notification_poll_interval_seconds=3600)
    created = await env.create()
    await asyncio.sleep(0.3)
    assert env.receiver.of_session(created["sessionId"]) == []  # the worker is asleep
    assert await first_store.outbox_backlog() == 1
    settings = env.client.app[SETTINGS].model_copy(
        update={"notification_poll_interval_seconds": 0.05}
    )
    await env.client.close()  # the first gateway stops with the item undelivered

    second_store = await store_factory("redis")
    second = await aiohttp_client(
        create_app(settings, store=second_store), server_kwargs={"port": unused_port()}
    )
    events = await wait_for(lambda: env.receiver.of_session(created["sessionId"]))
    assert [e["type"] for e in events] == ["payment_session.created"]
    assert await second_store.outbox_backlog() == 0
    await second.close()  # before its store is closed


# the merchants file ---------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "merchants.yaml"
    path.write_text(text)
    return path


def test_merchants_file_with_env_secret_and_disabled_merchant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("M1_SECRET", "s" * 32)
    path = _write(
        tmp_path,
        """
merchants:
  m1:
    webhook:
      url: https://shop.example/hooks
      secret_env: M1_SECRET
      events: [payment_session.updated]
  m2:
    webhook: {url: https://other.example/h, secret: "%s", enabled: false}
  m3: {}
"""
        % ("x" * 30),
    )
    directory = load_merchants(path, allow_http_localhost=False, required=True)
    assert set(directory.webhooks) == {"m1"}
    hook = directory.webhooks["m1"]
    assert hook.secrets == ("s" * 32,)
    assert directory.webhook_for("m1", "payment_session.updated") is hook
    assert directory.webhook_for("m1", "payment_session.created") is None
    assert "s" * 32 not in repr(hook)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("merchants: {m: {webhook: {url: 'http://shop.example/h', secret: '%s'}}}", "https"),
        ("merchants: {m: {webhook: {url: 'https://s.example/h'}}}", "secret"),
        ("merchants: {m: {webhook: {url: 'https://s.example/h', secret: short}}}", "at least"),
        ("merchants: {m: {webhook: {url: 'https://s.example/h', secret_env: NOPE_X}}}", "NOPE_X"),
        ("merchants: {m: {hook: {}}}", "hook"),
        (
            "merchants: {m: {webhook: {url: 'https://s.example/h', secret: '%s', events: [x]}}}",
            "events",
        ),
        ("merchants: [", "YAML"),
    ],
)
def test_merchants_file_problems_stop_start_up(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path, text.replace("%s", "y" * 30))
    with pytest.raises(SettingsError, match=problem):
        load_merchants(path, allow_http_localhost=False, required=True)


def test_missing_merchants_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    assert load_merchants(missing, allow_http_localhost=True, required=False).webhooks == {}
    with pytest.raises(SettingsError, match="does not exist"):
        load_merchants(missing, allow_http_localhost=True, required=True)
    local = _write(
        tmp_path,
        "merchants: {m: {webhook: {url: 'http://localhost:9/h', secret: '%s'}}}" % ("z" * 30),
    )
    assert set(load_merchants(local, allow_http_localhost=True, required=True).webhooks) == {"m"}
    with pytest.raises(SettingsError, match="https"):
        load_merchants(local, allow_http_localhost=False, required=True)


def test_the_shipped_example_merchants_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.api.conftest import ROOT

    monkeypatch.setenv("MERCHANT_1_WEBHOOK_SECRET", "e" * 32)
    directory = load_merchants(
        ROOT / "merchants.example.yaml", allow_http_localhost=False, required=True
    )
    assert set(directory.webhooks) == {"merchant-1"}


def test_the_readme_recipe_verifies_what_the_gateway_signs() -> None:
    from tests.api.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    start = readme.index("```python\nimport hashlib, hmac, time")
    code = readme[start + len("```python\n") : readme.index("```", start + 10)]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    recipe = namespace["verify_signature"]
    header = signature_header([MERCHANT_SECRET], int(time.time()), BODY)
    assert recipe(MERCHANT_SECRET, header, BODY) is True
    assert recipe(MERCHANT_SECRET, header, BODY + b"x") is False
    stale = signature_header([MERCHANT_SECRET], int(time.time()) - 600, BODY)
    assert recipe(MERCHANT_SECRET, stale, BODY) is False

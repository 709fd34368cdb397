"""The README's merchant-notification example is a real delivery: a first-in-series session
paid on the sandbox's Stripe page, as the merchant receiver got it (masked like the other
examples, see tests/api/test_readme_examples.py)."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import headers
from tests.api.test_readme_examples import PATIENT, Masker, check_readme
from tests.lifecycle.conftest import EnvFactory
from tests.lifecycle.test_loop import read_when, wait_for
from tests.providers.hosted_inputs import press

#: the customer paid two minutes after the session was created (real delays vary by run)
PAID_AT = "2026-01-15T11:02:13.412Z"


async def test_the_notification_example_is_a_real_delivery(lifecycle_env: EnvFactory) -> None:
    env = await lifecycle_env("stripe", **PATIENT)
    created = await env.create("readme-notification", sessionType="first_in_series")
    status, _ = await press(created["checkoutUrl"], "pay")
    assert status == 303
    view = await read_when(env, created["sessionId"], "COMPLETED", timeout=30)

    def paid() -> list[dict[str, Any]]:
        events = env.receiver.of_session(created["sessionId"])
        return [e for e in events if e["data"]["payment_session"]["status"] == "COMPLETED"]

    found = await wait_for(paid, timeout=30)
    assert len(found) == 1
    event: dict[str, Any] = found[0]
    ids = [event["id"], view["providerSessionId"], view["paymentId"], view["customerId"]]
    mask = Masker(view["createdAt"], [*ids, view["paymentMethodId"]])
    example = mask(event)
    example["createdAt"] = PAID_AT
    example["data"]["payment_session"]["updatedAt"] = PAID_AT
    check_readme({"notification": example})


#: the refund was asked three minutes after the session was created, and Stripe confirmed it
REFUNDED_AT = "2026-01-15T11:03:00.000Z"
SETTLED_AT = "2026-01-15T11:03:00.412Z"


async def test_the_refund_notification_example_is_a_real_delivery(
    lifecycle_env: EnvFactory,
) -> None:
    env = await lifecycle_env("stripe", **PATIENT)
    created = await env.create("readme-refund")
    session_id = created["sessionId"]
    status, _ = await press(created["checkoutUrl"], "pay")
    assert status == 303
    await read_when(env, session_id, "COMPLETED", timeout=30)
    refund = await env.client.post(
        f"/api/v1/sessions/{session_id}/refunds",
        json={"amount": "40.00", "reason": "requested_by_customer"},
        headers=headers("readme-refund-1"),
    )
    assert refund.status == 201, await refund.text()

    def settled() -> list[dict[str, Any]]:
        events = env.receiver.of_session(session_id)
        return [e for e in events if e["type"] == "refund.updated"]

    found = await wait_for(settled, timeout=30)
    assert len(found) == 1
    event: dict[str, Any] = found[0]
    view = await env.read(session_id)
    data = event["data"]
    ids = [event["id"], view["providerSessionId"], view["paymentId"]]
    mask = Masker(view["createdAt"], [*ids, data["refund"]["providerRefundId"]])
    example = mask(event)
    example["createdAt"] = SETTLED_AT
    example["data"]["refund"].update(createdAt=REFUNDED_AT, updatedAt=SETTLED_AT)
    example["data"]["payment_session"]["updatedAt"] = SETTLED_AT
    # created, paid, refund reserved, Stripe's answer and its webhook recorded: 4 changes, in
    # either order of the last two (the event carries the version of its own change)
    assert example["data"]["payment_session"]["version"] in (3, 4)
    example["data"]["payment_session"]["version"] = 4
    assert example["data"]["refund"]["status"] == "SUCCEEDED"
    assert example["data"]["payment_session"]["amountRefunded"] == "40.00"
    check_readme({"refund-notification": example})

"""The README's merchant-notification example is a real delivery: a first-in-series session
paid on the sandbox's Stripe page, as the merchant receiver got it (masked like the other
examples, see tests/api/test_readme_examples.py)."""

from __future__ import annotations

from typing import Any

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

"""The adaptive learner end to end: checkouts through the gateway on a real socket, customers
pressing Pay or Decline on the sandbox pay pages at scripted approval rates, the providers'
webhooks moving the sessions, and routing following the approvals."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import yaml

from tests.api.conftest import headers, seed
from tests.lifecycle.conftest import Env, EnvFactory, lifecycle_env  # noqa: F401
from tests.providers.hosted_inputs import press
from tests.routing.helpers import ROOT

#: Pay (True) or Decline (False) per order at each provider, repeating: 90% and 30% approval
NINETY = [True] * 9 + [False]
THIRTY = [True, False, False, True, False, False, True, False, False, False]


def adaptive_rules(tmp_path: Path) -> Path:
    """The shipped rules without the Australian A/B split (the seed request is AUD/AU)."""
    rules = yaml.safe_load((ROOT / "routing_rules.yaml").read_text())
    rules["rules"] = [r for r in rules["rules"] if r["id"] != "au-cards-split"]
    path = tmp_path / "rules-adaptive.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


class Verdicts:
    """Counts the payment verdicts the router is given (the real call runs unchanged): a
    session reads final as soon as it is stored and its verdict is learnt just after that, so
    the next order waits for it, or what it is routed with would depend on the machine's load."""

    def __init__(self, env: Env) -> None:
        self.count = 0
        self._changed = asyncio.Event()
        learn = env.router.record_payment

        async def counted(*args: Any, **kwargs: Any) -> None:
            await learn(*args, **kwargs)
            self.count += 1
            self._changed.set()

        env.router.record_payment = counted

    async def reach(self, n: int) -> None:
        """Wait until ``n`` verdicts were learnt (10 s at most)."""
        async with asyncio.timeout(10):
            while self.count < n:
                self._changed.clear()
                await self._changed.wait()


async def settle(env: Env, session_id: str) -> str:
    """The session's status once the provider's webhook moved it to a final one."""
    deadline = time.monotonic() + 10
    while True:
        view = await env.read(session_id)
        if view["status"] in ("COMPLETED", "FAILED") or time.monotonic() > deadline:
            return str(view["status"])
        await asyncio.sleep(0.02)


async def checkout(
    env: Env, n: int, approves: dict[str, list[bool]], verdicts: Verdicts
) -> tuple[str, str]:
    """One order: routed, paid or declined by the customer, settled by webhook."""
    await verdicts.reach(n)  # every earlier order's verdict is learnt
    await env.router.flush()
    await env.router.refresh_stats()  # what the refresh loop does every 1.5 s
    created = await env.create(key=f"adapt-{n}", orderReference=f"ADAPT-{n}")
    provider = created["routing"]["selectedProvider"]
    script = approves[provider]
    action = "pay" if script[n % len(script)] else "decline"
    status, _ = await press(created["checkoutUrl"], action)
    assert status in (302, 303), status
    final = await settle(env, created["sessionId"])
    assert final == ("COMPLETED" if action == "pay" else "FAILED")
    return provider, final


async def test_traffic_leaves_a_provider_whose_approvals_drop(
    lifecycle_env: EnvFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    env = await lifecycle_env(rules_path=adaptive_rules(tmp_path))
    verdicts = Verdicts(env)
    both = {"stripe": NINETY, "adyen": NINETY}
    steady = [await checkout(env, n, both, verdicts) for n in range(30)]
    chosen = [p for p, _ in steady]
    top = max(("stripe", "adyen"), key=chosen.count)
    other = "adyen" if top == "stripe" else "stripe"
    assert chosen[10:].count(top) >= 16, chosen  # one leads while both approve
    cell = (top, "cell", "AUD.AU.card")
    before = env.router.stats.segments[cell]
    assert before.payment_ok + before.payment_fail >= 16  # counted from the webhooks

    rates = {top: THIRTY, other: NINETY}
    after = [await checkout(env, 30 + n, rates, verdicts) for n in range(60)]
    providers = [p for p, _ in after]
    moved = next(
        (i for i in range(15, len(providers) + 1) if providers[i - 15 : i].count(other) >= 12),
        None,
    )
    assert moved is not None, providers
    assert moved <= 45, providers
    assert providers[-15:].count(other) >= 12, providers
    assert env.router.stats.segments[cell].changed_at > 0  # detected from the webhooks' verdicts

    answer = await env.client.post(
        "/api/v1/routing/simulate",
        json=seed(orderReference="ADAPT-SIM"),
        headers=headers(None, scopes=["routing:read"]),
    )
    explained = {c["provider"]: c["details"] for c in (await answer.json())["candidates"]}
    assert explained[top]["changeDetectedAt"] is not None
    assert explained[top]["successRate"] < explained[other]["successRate"]
    assert explained[top]["paymentSamples"] > 0

"""The pacer's write budget (catsock/pacer.py): how it follows the event loop's lag,
and what a live-only recipient gets per round under it, against a real gateway."""

from __future__ import annotations

import json

import trio

from catsock.pacer import MIN_BUDGET, START_BUDGET, Pacer

from .harness import CONVERSION, GatewayFactory, envelope
from .test_delivery import publish_all


def test_the_budget_halves_while_behind_and_grows_back_when_calm() -> None:
    lag = [0.0]
    pacer = Pacer(0.05, lag=lambda: lag[0], limit=0.2)
    pacer._adapt()
    assert pacer.budget is None  # calm: no limit
    lag[0] = 0.15  # past half the limit
    pacer._adapt()
    assert pacer.budget == START_BUDGET
    for _ in range(20):
        pacer._adapt()
    assert pacer.budget == MIN_BUDGET  # halved every round, down to the floor
    lag[0] = 0.05  # under the limit but not calm (a quarter of it): held
    pacer._adapt()
    assert pacer.budget == MIN_BUDGET
    lag[0] = 0.0
    rounds = 0
    while pacer.budget is not None:
        pacer._adapt()
        rounds += 1
    assert 10 < rounds < 30  # a quarter more per calm round, then no limit
    assert Pacer(0.05, lag=lambda: 1.0, limit=0.0).budget is None  # admission off: never


async def test_under_a_budget_a_dashboard_gets_its_backlog_over_several_rounds(
    start_gateway: GatewayFactory,
) -> None:
    """30 events of ~2 KB reach a reading dashboard in one round without a budget, and
    over at least 30 KiB / 4 KiB rounds with one: the budget, not the socket, paces it;
    nothing is lost (the queue holds them all)."""
    gw = await start_gateway(limits={"rate_limits_enabled": False})
    pacer = gw.gateway.delivery.pacer
    pad = "x" * 2000
    rounds: dict[str, list[int]] = {}
    for budget in (None, MIN_BUDGET):
        pacer._limit = 0.0  # the budget stays what the test sets
        pacer.budget = budget
        texts = [
            envelope("conversion", {**CONVERSION, "pad": pad}, "CATS", f"b{budget}-{i}")
            for i in range(30)
        ]
        with trio.fail_after(30):
            async with gw.client("CATS") as cats, gw.client("DASHBOARD") as dash:
                await publish_all(cats, texts)
                seen = []
                for _ in texts:
                    seen.append(json.loads(await dash.recv_text())["message_id"])
                    rounds.setdefault(str(budget), []).append(pacer.rounds)
        assert seen == [f"b{budget}-{i}" for i in range(30)]
    unlimited, budgeted = rounds["None"], rounds[str(MIN_BUDGET)]
    assert unlimited[-1] - unlimited[0] <= 1
    assert budgeted[-1] - budgeted[0] >= 30 * 2000 // MIN_BUDGET - 1

"""catsock/conformance/expiry.py against a live catsock, on the fake clock: the three
checks pass, and each can fail or skip when what it is given says so."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from catsock.conformance import expiry
from catsock.conformance.results import Status

from .harness import GatewayFactory, RunningGateway
from .jwtkit import SECRET, T0


def fake_wall() -> float:
    return T0 + trio.current_time()


async def gateway(start_gateway: GatewayFactory) -> RunningGateway:
    return await start_gateway(wall_clock=fake_wall, jwt={"secret": SECRET, "leeway": 2})


def short(sub: str = "dash-c", ttl: float = 20, **extra: str) -> str:
    return expiry.mint_hs(
        SECRET, sub=sub, client_type="DASHBOARD", ttl=ttl, now=fake_wall(), **extra
    )


async def test_every_expiry_check_passes_against_catsock(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await gateway(start_gateway)
    options = {"leeway": 2.0, "wall_clock": fake_wall}
    with trio.fail_after(600):
        results = [
            await expiry.expiry_closes(gw.url, short(), "DASHBOARD", **options),
            await expiry.refresh_extends(
                gw.url, short(), short(ttl=120), "DASHBOARD", **options
            ),
            await expiry.refresh_other_identity_refused(
                gw.url, short(), short("dash-other", ttl=120), "DASHBOARD", **options
            ),
        ]
    for result in results:
        assert result.status is Status.PASS, result


async def test_an_opaque_token_needs_its_expiry_given(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await gateway(start_gateway)
    token = gw.token("plain", "CATS")
    with trio.fail_after(600):
        skipped = await expiry.expiry_closes(gw.url, token, "CATS", wall_clock=fake_wall)
        assert skipped.status is Status.SKIP
        # This token never expires: told it does, the check sees no TOKEN_EXPIRED.
        failed = await expiry.expiry_closes(
            gw.url, token, "CATS", expires_at=fake_wall() + 10, wall_clock=fake_wall
        )
    assert failed.status is Status.FAIL
    assert "TOKEN_EXPIRED" in failed.detail


async def test_a_refresh_check_fails_when_the_gateway_accepts_what_it_should_refuse(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await gateway(start_gateway)
    with trio.fail_after(600):
        # "Another identity" that is the same one: catsock accepts the refresh.
        result = await expiry.refresh_other_identity_refused(
            gw.url, short(), short(ttl=120), "DASHBOARD", wall_clock=fake_wall
        )
    assert result.status is Status.FAIL
    assert "auth_success" in result.detail


@pytest.mark.parametrize(
    ("token", "exp"),
    [("cs_opaque", None), ("a.b", None), ("x.e30.y", None), ("x.!!.y", None)],
)
def test_token_expiry_reads_only_a_jwt_exp(token: str, exp: float | None) -> None:
    assert expiry.token_expiry(token) == exp


def test_token_expiry_of_a_minted_token() -> None:
    token = expiry.mint_hs(SECRET, sub="s", client_type="CATS", ttl=60, now=T0)
    assert expiry.token_expiry(token) == T0 + 60


async def test_the_extensions_profile_runs_them_given_the_secret(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    """The ``jwt.`` checks of the extensions profile mint their tokens with the
    target's secret (``--jwt-secret``), pass against catsock, and are skipped,
    saying why, without it."""
    from catsock.conformance import JwtTarget, run_conformance

    gw = await gateway(start_gateway)
    names = ["jwt.expiry_closes", "jwt.refresh_extends", "jwt.refresh_other_identity_refused"]
    with trio.fail_after(600):
        given = await run_conformance(
            gw.url,
            {},
            profiles=["extensions"],
            only=["jwt."],
            jwt=JwtTarget(secret=SECRET, leeway=2.0),
            wall_clock=fake_wall,
        )
        without = await run_conformance(gw.url, {}, profiles=["extensions"], only=["jwt."])
    assert [(r.name, r.status, r.section) for r in given] == [
        (name, Status.PASS, "§2.1") for name in names
    ], given
    assert [(r.name, r.status) for r in without] == [(name, Status.SKIP) for name in names]
    assert all("--jwt-secret" in r.detail for r in without)

"""Behind a proxy the peer's identity must still be true (``guard.trusted_proxies``):
``X-Forwarded-For`` or ``Forwarded`` name the client only when a trusted proxy sent
them, and then for the IP allow-list, the per-address limits and the logs; from
any other peer a spoofed header changes nothing.

Peers come from other loopback addresses (127.0.0.2, ...; Linux routes 127/8 to
``lo``), as in tests/catsock/test_guard_gateway.py, whose helpers these reuse.
"""

from __future__ import annotations

import json

import pytest
import trio

import storage
from catsock.config import ConfigError, GuardConfig, load_config
from catsock.guard import AddressGuard

from .harness import GatewayFactory, RawClient
from .test_guard_gateway import (
    Refused,
    assert_address_refusal,
    auth_from,
    connect_from,
    handshake,
    http_from,
)

PROXY = "127.0.0.2"
STRANGER = "127.0.0.3"


def guard(**settings: object) -> AddressGuard:
    return AddressGuard(GuardConfig(**settings))  # type: ignore[arg-type]


# -- the header rules, without sockets ----------------------------------------------------


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        ("for=198.51.100.7", "198.51.100.7"),
        ('for="[2001:db8::1]:4711"', "2001:db8::1"),
        ('for="198.51.100.7:8080";proto=https;by=10.0.0.5', "198.51.100.7"),
        ("for=6.6.6.6, for=198.51.100.7", "198.51.100.7"),  # the client's own part: left
        ("for=198.51.100.7, for=10.0.0.9", "198.51.100.7"),  # through two proxies
        ("FOR=198.51.100.7", "198.51.100.7"),  # parameter names are case-insensitive
        ("for=198.51.100.7, for=unknown", "10.0.0.5"),  # nothing left of an unknown hop
        ("for=198.51.100.7, for=_hidden", "10.0.0.5"),  # nor of an obfuscated one
        ("proto=https", "10.0.0.5"),  # an element without for=
    ],
)
def test_forwarded_names_the_client(forwarded: str, client: str) -> None:
    behind = guard(trusted_proxies=["10.0.0.0/8"], forwarded_header="Forwarded")
    assert behind.client_from("10.0.0.5", {"forwarded": forwarded}) == client


def test_only_the_configured_header_is_read() -> None:
    headers = {"x-forwarded-for": "198.51.100.7", "forwarded": "for=203.0.113.9"}
    xff = guard(trusted_proxies=["10.0.0.0/8"])
    rfc = guard(trusted_proxies=["10.0.0.0/8"], forwarded_header="forwarded")
    # nginx writes X-Forwarded-For and passes a client's own Forwarded through: it
    # must not count, and the other way round.
    assert xff.client_from("10.0.0.5", headers) == "198.51.100.7"
    assert rfc.client_from("10.0.0.5", headers) == "203.0.113.9"


@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded"])
def test_an_untrusted_peer_names_nobody(header: str) -> None:
    value = "198.51.100.7" if header == "x-forwarded-for" else "for=198.51.100.7"
    untrusting = guard(trusted_proxies=["10.0.0.0/8"], forwarded_header=header)
    assert untrusting.client_from("192.0.2.1", {header: value}) == "192.0.2.1"
    assert guard().client_from("10.0.0.5", {header: value}) == "10.0.0.5"


def test_the_forwarded_header_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match="forwarded_header"):
        load_config(environ={"CATSOCK_GUARD__FORWARDED_HEADER": "X-Real-IP"})


# -- the allow-list ---------------------------------------------------------------------------


async def test_the_allow_list_applies_to_the_client_a_trusted_proxy_names(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(
        allow={"ips": ["198.51.100.0/24", STRANGER]}, guard={"trusted_proxies": [PROXY]}
    )
    with trio.fail_after(20):
        allowed = await handshake(gw.port, PROXY, {"X-Forwarded-For": "198.51.100.7"})
        assert isinstance(allowed, RawClient)
        await allowed.aclose()
        for headers in (
            {"X-Forwarded-For": "203.0.113.7"},  # a client not on the list
            {"X-Forwarded-For": "198.51.100.7, 203.0.113.7"},  # spoofed left part
            {},  # the proxy itself is not on the list
        ):
            refused = await handshake(gw.port, PROXY, headers)
            assert isinstance(refused, Refused), headers
            assert refused.status == 403
            assert json.loads(refused.body)["error_code"] == "ADDRESS_NOT_ALLOWED"
        # Plain HTTP through the proxy is checked the same way.
        ok = await http_from(gw.port, PROXY, "GET", "/health", {"x-forwarded-for": "198.51.100.7"})
        assert ok.status == 200
        denied = await http_from(gw.port, PROXY, "GET", "/health", {"x-forwarded-for": "6.6.6.6"})
        assert denied.status == 403


async def test_a_spoofed_header_from_an_untrusted_peer_does_not_pass_the_allow_list(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(
        allow={"ips": ["198.51.100.0/24", PROXY]}, guard={"trusted_proxies": [PROXY]}
    )
    with trio.fail_after(20):
        # Closed as soon as it connects, before a byte of its request is read.
        async with await connect_from(gw.port, STRANGER) as stream:
            await stream.send_all(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n"
                b"Forwarded: for=198.51.100.7\r\n\r\n"
            )
            try:
                answer = await stream.receive_some(1024)
            except trio.BrokenResourceError:  # reset: it closed with our bytes unread
                answer = b""
            assert answer == b""
    assert gw.gateway.stats.refused_ip == 1


# -- per-address limits -------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded"])
async def test_spoofed_headers_from_an_untrusted_peer_share_its_limits(
    start_gateway: GatewayFactory, header: str
) -> None:
    gw = await start_gateway(
        guard={
            "trusted_proxies": [PROXY],
            "forwarded_header": header,
            "max_unauthenticated_per_address": 1,
            "auth_lockout_after": 2,
            "auth_free_failures": 5,
        }
    )
    token = gw.token("cats", "CATS")

    def spoof(n: int) -> dict[str, str]:
        address = f"198.51.100.{n}"
        return {header: address if header == "X-Forwarded-For" else f"for={address}"}

    with trio.fail_after(20):
        first = await handshake(gw.port, STRANGER, spoof(1))
        assert isinstance(first, RawClient)
        try:
            # Another "client" named by the stranger is still the stranger.
            assert_address_refusal(
                await handshake(gw.port, STRANGER, spoof(2)),
                "too many unauthenticated WebSockets from your address",
            )
        finally:
            await first.aclose()
        # Failed auths under rotating spoofed names lock the stranger itself out.
        for n in (3, 4):
            assert await auth_from(gw.port, STRANGER, "cs_wrong", spoof(n)) == ("AUTH_FAILED", 1008)
        assert (await auth_from(gw.port, STRANGER, token, spoof(5)))[0] == "RATE_LIMIT_EXCEEDED"
        # Through the trusted proxy, the client it names is someone else.
        assert await auth_from(gw.port, PROXY, token, spoof(6)) == ("auth_success", None)


# -- logs ---------------------------------------------------------------------------------------


async def test_the_logs_name_the_forwarded_client(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(guard={"trusted_proxies": [PROXY]})
    token = gw.token("cats", "CATS")
    with trio.fail_after(20):
        assert await auth_from(gw.port, PROXY, token, {"X-Forwarded-For": "198.51.100.7"}) == (
            "auth_success",
            None,
        )
        assert await auth_from(gw.port, STRANGER, token, {"X-Forwarded-For": "198.51.100.8"}) == (
            "auth_success",
            None,
        )
        await gw.gateway.log.flush()
    db = storage.open_db(gw.database)
    try:
        remotes = [
            row[0] for row in db.conn.execute("SELECT remote_addr FROM connections").fetchall()
        ]
    finally:
        db.close()
    via_proxy, direct = sorted(remotes, key=lambda r: not r.startswith("198."))
    assert via_proxy == "198.51.100.7"
    assert direct.startswith(f"{STRANGER}:")
    assert "198.51.100.8" not in " ".join(remotes)

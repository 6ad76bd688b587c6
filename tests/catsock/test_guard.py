"""catsock/guard.py on its own: per-address counting, client addresses behind a
proxy, failed-auth delays and lockouts, and how often it logs. No sockets, no
trio: the clock is a plain function the tests move."""

from __future__ import annotations

import logging

import attrs
import pytest

from catsock import guard as guard_module
from catsock.config import GuardConfig
from catsock.guard import WARN_EVERY, AddressGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock | None = None, **settings: object) -> AddressGuard:
    config = attrs.evolve(GuardConfig(), **settings)  # type: ignore[arg-type]
    return AddressGuard(config, clock=clock or Clock())


# -- connections and unauthenticated WebSockets -------------------------------------------


def test_an_address_gets_its_share_and_no_more() -> None:
    guard = make(max_connections_per_address=2)
    first, second = guard.connection("192.0.2.1"), guard.connection("192.0.2.1")
    assert first is not None
    assert second is not None
    assert guard.connection("192.0.2.1") is None
    assert guard.connection("192.0.2.2") is not None  # another address: its own share
    first.release()
    first.release()  # twice gives back one slot, not two
    assert guard.held("192.0.2.1") == (1, 0)
    assert guard.connection("192.0.2.1") is not None
    assert guard.connection("192.0.2.1") is None
    assert guard.statistics().refused_connections == 2


def test_unauthenticated_websockets_are_counted_apart() -> None:
    guard = make(max_unauthenticated_per_address=1)
    slot = guard.unauthenticated("192.0.2.1")
    assert slot is not None
    assert guard.unauthenticated("192.0.2.1") is None
    assert guard.connection("192.0.2.1") is not None  # a separate count
    slot.release()
    assert guard.unauthenticated("192.0.2.1") is not None
    assert guard.statistics().refused_unauthenticated == 1


def test_released_addresses_leave_nothing_behind() -> None:
    guard = make()
    slots = [guard.connection(f"192.0.2.{n}") for n in range(1, 200)]
    for slot in slots:
        assert slot is not None
        slot.release()
    assert guard._connections == {}


def test_exempt_addresses_are_never_limited() -> None:
    guard = make(max_connections_per_address=1, max_unauthenticated_per_address=1)
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        for _ in range(5):
            assert guard.connection(address) is not None
            assert guard.unauthenticated(address) is not None
        assert guard.failed(address) == 0.0
    assert guard.connection("127.0.0.2") is not None  # only what is listed
    assert guard.connection("127.0.0.2") is None


def test_ipv6_addresses_count_by_their_64() -> None:
    guard = make(max_connections_per_address=2)
    assert guard.connection("2001:db8:1:2::1") is not None
    assert guard.connection("2001:db8:1:2:ffff::9") is not None
    assert guard.connection("2001:db8:1:2::3") is None  # the same /64
    assert guard.connection("2001:db8:1:3::1") is not None
    # An IPv4 peer on an IPv6 socket is the IPv4 address.
    assert guard.connection("::ffff:192.0.2.7") is not None
    assert guard.held("192.0.2.7") == (1, 0)


# -- the client behind a trusted proxy ------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("192.0.2.1", "198.51.100.7", "192.0.2.1"),  # not a proxy: the header is ignored
        ("10.0.0.5", None, "10.0.0.5"),  # a proxy that names nobody
        ("10.0.0.5", "198.51.100.7", "198.51.100.7"),
        ("10.0.0.5", "6.6.6.6, 198.51.100.7", "198.51.100.7"),  # spoofed left part
        ("10.0.0.5", "198.51.100.7, 10.0.0.9", "198.51.100.7"),  # two proxies
        ("10.0.0.5", "198.51.100.7, garbage", "10.0.0.5"),  # a bad entry: trust nothing
        ("10.0.0.5", "10.0.0.8, 10.0.0.9", "10.0.0.8"),  # proxies all the way
        ("10.0.0.5", " 2001:db8::1 ", "2001:db8::1"),
    ],
)
def test_a_trusted_proxy_names_the_client(peer: str, forwarded: str | None, client: str) -> None:
    guard = make(trusted_proxies=["10.0.0.0/8"])
    assert guard.client(peer, forwarded) == client


def test_a_proxy_is_recognised_only_when_listed() -> None:
    guard = make(trusted_proxies=["10.0.0.0/8", "::1"])
    assert guard.is_proxy("10.1.2.3")
    assert guard.is_proxy("::1")
    assert not guard.is_proxy("192.0.2.1")
    assert not guard.is_proxy("?")


# -- failed authentication ----------------------------------------------------------------


THROTTLE = {
    "auth_free_failures": 3,
    "auth_delay": 0.5,
    "auth_max_delay": 4.0,
    "auth_lockout_after": 10,
    "auth_lockout": 300.0,
    "auth_forget_after": 900.0,
}


def test_failures_slow_down_then_lock_the_address_out() -> None:
    clock = Clock()
    guard = make(clock, **THROTTLE)
    delays = [guard.failed("192.0.2.1") for _ in range(9)]
    assert delays == [0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert guard.locked_for("192.0.2.1") == 0.0
    guard.failed("192.0.2.1")  # the tenth
    assert guard.locked_for("192.0.2.1") == 300.0
    clock.now += 100
    assert guard.locked_for("192.0.2.1") == 200.0
    stats = guard.statistics()
    assert (stats.auth_delayed, stats.auth_lockouts, stats.auth_refused_locked) == (7, 1, 2)
    assert stats.locked_addresses == 1


def test_a_lockout_never_touches_another_address() -> None:
    guard = make(Clock(), **THROTTLE)
    for _ in range(10):
        guard.failed("192.0.2.1")
    assert guard.locked_for("192.0.2.1") > 0
    assert guard.locked_for("192.0.2.2") == 0.0
    assert guard.failed("192.0.2.2") == 0.0


def test_after_a_lockout_one_more_failure_locks_again() -> None:
    clock = Clock()
    guard = make(clock, **THROTTLE)
    for _ in range(10):
        guard.failed("192.0.2.1")
    clock.now += 301
    assert guard.locked_for("192.0.2.1") == 0.0
    assert guard.failed("192.0.2.1") == 4.0
    assert guard.locked_for("192.0.2.1") == 300.0
    assert guard.statistics().auth_lockouts == 2


def test_failures_are_forgotten_after_a_quiet_while() -> None:
    clock = Clock()
    guard = make(clock, **THROTTLE)
    for _ in range(6):
        guard.failed("192.0.2.1")
    clock.now += 900
    assert guard.failed("192.0.2.1") == 0.0  # a fresh start
    for _ in range(10):
        guard.failed("192.0.2.2")
    clock.now += 900  # locked until +300, then quiet until +900
    assert guard.failed("192.0.2.2") == 0.0
    assert guard.locked_for("192.0.2.2") == 0.0


def test_stale_records_are_dropped_and_their_number_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(guard_module, "MAX_TRACKED", 50)
    clock = Clock()
    guard = make(clock, **THROTTLE)
    for n in range(200):
        guard.failed(f"10.0.{n // 250}.{n % 250}")
    assert len(guard._failures) == 50
    clock.now += 1000
    guard.failed("192.0.2.1")
    assert list(guard._failures) == ["192.0.2.1"]


# -- logging ---------------------------------------------------------------------------------


def test_one_warning_per_address_and_kind_per_period(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    guard = make(clock, max_connections_per_address=1, **THROTTLE)
    caplog.set_level(logging.WARNING, logger="catsock.guard")
    guard.connection("192.0.2.1")
    guard.connection("192.0.2.2")
    for _ in range(100):
        assert guard.connection("192.0.2.1") is None
        assert guard.connection("192.0.2.2") is None
    for _ in range(20):
        guard.failed("192.0.2.1")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert sum("192.0.2.1" in m and "connections" in m for m in messages) == 1
    assert sum("192.0.2.2" in m for m in messages) == 1
    assert sum("locking out 192.0.2.1" in m for m in messages) == 1
    clock.now += WARN_EVERY
    guard.connection("192.0.2.1")
    assert len(caplog.records) == 4

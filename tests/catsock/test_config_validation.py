"""catsock.config's validation of the rate limits (issue 20, bug 1).

A zero or negative ``per_minute``, ``burst`` or ``abuse_limit`` used to pass
validation; the gateway then started, and every login of that client type raised
in ``TokenBucket`` (the connection half-registered, its identity locked out until a
restart). Now ``load_config`` refuses such a setting with a message naming it, from
wherever it came, and whatever it lets through makes working buckets.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catsock.config import ConfigError, load_config
from protocol import TokenBucket


def _limits(**limits: Any) -> dict[str, Any]:
    return {"limits": limits}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            _limits(rate={"CATS": {"per_minute": 0, "burst": 100}}),
            "limits.rate.CATS.per_minute must be a positive number of messages a minute, not 0.0",
        ),
        (
            _limits(rate={"AFAD": {"per_minute": -60, "burst": 100}}),
            "limits.rate.AFAD.per_minute must be a positive number of messages a minute, not -60.0",
        ),
        (
            _limits(rate={"DASHBOARD": {"per_minute": 100, "burst": 0}}),
            "limits.rate.DASHBOARD.burst must be at least 1 message, not 0",
        ),
        (
            _limits(rate={"BOT": {"per_minute": 100, "burst": -1}}),
            "limits.rate.BOT.burst must be at least 1 message, not -1",
        ),
        (_limits(abuse_limit=0), "limits.abuse_limit must be at least 1 rejection, not 0"),
        (_limits(abuse_limit=-5), "limits.abuse_limit must be at least 1 rejection, not -5"),
        (
            _limits(send_queue_bytes=1000),
            "limits.send_queue and limits.live_send_queue must be at least 1 and"
            " limits.send_queue_bytes at least limits.max_message_size (65536)",
        ),
        (
            _limits(live_send_queue=0),
            "limits.send_queue and limits.live_send_queue must be at least 1 and"
            " limits.send_queue_bytes at least limits.max_message_size (65536)",
        ),
    ],
    ids=[
        "per_minute-zero",
        "per_minute-negative",
        "burst-zero",
        "burst-negative",
        "abuse-zero",
        "abuse-negative",
        "send-queue-bytes-under-a-message",
        "live-send-queue-zero",
    ],
)
def test_a_limit_that_cannot_work_is_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, overrides=overrides)
    assert str(raised.value) == message


def test_refused_even_with_rate_limits_disabled() -> None:
    # Turning them on later must not be what breaks the gateway.
    overrides = _limits(rate_limits_enabled=False, abuse_limit=0)
    with pytest.raises(ConfigError, match=r"^limits\.abuse_limit must be at least 1"):
        load_config(environ={}, overrides=overrides)


def test_every_problem_is_named_at_once() -> None:
    overrides = _limits(rate={"CATS": {"per_minute": 0, "burst": 0}}, abuse_limit=0)
    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, overrides=overrides)
    assert str(raised.value).split("; ") == [
        "limits.rate.CATS.per_minute must be a positive number of messages a minute, not 0.0",
        "limits.rate.CATS.burst must be at least 1 message, not 0",
        "limits.abuse_limit must be at least 1 rejection, not 0",
    ]


def test_from_a_file_and_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "catsock.toml"
    path.write_text("[limits.rate.CATS]\nper_minute = nan\nburst = 10\n")
    with pytest.raises(ConfigError, match=r"^limits\.rate\.CATS\.per_minute .* not nan$"):
        load_config(path, environ={})
    path.write_text("[limits.rate.CATS]\nper_minute = inf\nburst = 10\n")
    with pytest.raises(ConfigError, match=r"^limits\.rate\.CATS\.per_minute .* not inf$"):
        load_config(path, environ={})
    environ = {"CATSOCK_LIMITS__RATE__AFAD__BURST": "0"}
    with pytest.raises(ConfigError, match=r"^limits\.rate\.AFAD\.burst must be at least 1"):
        load_config(environ=environ)
    with pytest.raises(ConfigError, match=r"^limits\.abuse_limit must be at least 1"):
        load_config(environ={"CATSOCK_LIMITS__ABUSE_LIMIT": "0"})


def test_the_smallest_working_limits_are_accepted() -> None:
    overrides = _limits(rate={"CATS": {"per_minute": 0.5, "burst": 1}}, abuse_limit=1)
    config = load_config(environ={}, overrides=overrides)
    limits = config.rate_limits()
    assert limits is not None
    bucket = limits["CATS"].bucket(0.0)
    assert (bucket.take(0.0), bucket.take(0.0)) == (0.0, 120.0)  # one message, then 2 min


@given(
    per_minute=st.floats(allow_nan=True, allow_infinity=True),
    burst=st.integers(-3, 3),
    abuse_limit=st.integers(-3, 3),
)
def test_what_validation_lets_through_makes_working_buckets(
    per_minute: float, burst: int, abuse_limit: int
) -> None:
    """Either load_config refuses the setting, or both buckets a login makes from it
    (protocol/machine.py: the client's own, and its abuse allowance at the same rate)
    can be built: nothing in between fails at the first login."""
    overrides = _limits(rate={"CATS": {"per_minute": per_minute, "burst": burst}})
    overrides["limits"]["abuse_limit"] = abuse_limit
    usable = math.isfinite(per_minute) and per_minute / 60 > 0 and burst >= 1 and abuse_limit >= 1
    try:
        config = load_config(environ={}, overrides=overrides)
    except ConfigError:
        assert not usable
        return
    limits = config.rate_limits()
    assert limits is not None
    own = limits["CATS"].bucket(0.0)
    TokenBucket(own.rate, config.limits.abuse_limit, 0.0)


def test_the_hard_retention_bound_may_not_be_below_the_soft_one() -> None:
    with pytest.raises(ConfigError, match=r"retention_hard_rows must be at least"):
        load_config(
            environ={}, overrides={"delivery": {"retention_rows": 100, "retention_hard_rows": 99}}
        )
    config = load_config(environ={}, overrides={"delivery": {"retention_hard_rows": 1_000_000}})
    assert config.delivery.retention_hard_rows == 1_000_000


# -- [privacy] (docs/privacy.md) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        ({"personal_retention_hours": 0}, "privacy.personal_retention_hours must be a positive"),
        ({"personal_retention_hours": -1.5}, "privacy.personal_retention_hours must be a positive"),
        ({"personal_retention_hours": math.inf}, "privacy.personal_retention_hours"),
        ({"personal_fields": ["ipaddress", " "]}, "privacy.personal_fields: a field name"),
        ({"projections": {"@user": {}}}, "privacy.projections: '@user' is not RECIPIENTS"),
        ({"projections": {"DASHBOARD/": {}}}, "is not RECIPIENTS or RECIPIENTS/EVENT_TYPE"),
        ({"projections": {"AFAD": {"deny": [""]}}}, "privacy.projections.AFAD: a field name"),
        ({"projections": {"AFAD": {"hide": ["x"]}}}, "hide"),
    ],
)
def test_a_privacy_setting_that_cannot_work_is_refused(
    privacy: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(environ={}, overrides={"privacy": privacy})


def test_privacy_settings_come_from_the_environment_too() -> None:
    config = load_config(
        environ={
            "CATSOCK_PRIVACY__PERSONAL_FIELDS": "ipaddress,email",
            "CATSOCK_PRIVACY__PERSONAL_RETENTION_HOURS": "6",
            "CATSOCK_PRIVACY__PROJECTIONS__AFAD__DENY": '["cost"]',
        }
    )
    assert config.privacy.personal_fields == ["ipaddress", "email"]
    assert config.privacy.personal_retention_hours == 6.0
    assert config.privacy.projections["AFAD"].deny == ["cost"]
    assert "*@user" in config.privacy.projections  # the default stays
    assert config.redact_fields() == {"ipaddress", "useragent", "email"}

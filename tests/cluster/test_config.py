"""The ``[cluster]`` section (catsock/config.py) and a node whose Redis is not there."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from catsock.config import ConfigError, load_config, to_toml
from catsock.server import Gateway, StartupError
from tests.cluster.redisserver import RedisServer


def test_env_sets_the_redis_url_and_the_password_is_never_printed() -> None:
    url = "rediss://catsock:s3cret-pass@redis.internal:6380/2"
    config = load_config(environ={"CATSOCK_CLUSTER__REDIS": url})
    assert config.cluster.redis == url
    shown = to_toml(config)
    assert "s3cret-pass" not in shown
    assert 'redis = "rediss://catsock:***@redis.internal:6380/2"' in shown
    assert "s3cret-pass" not in repr(config)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h:6379/0", "must be a redis:// or rediss:// URL"),
        ("redis://h:port/0", "bad port"),
        ("redis:///0", "no host"),
        ("redis://h:6379/zero", "the database must be a number"),
    ],
)
def test_a_bad_redis_url_is_refused_clearly(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(environ={"CATSOCK_CLUSTER__REDIS": url})


@pytest.mark.parametrize("prefix", ["", "two words", "{tagged}"])
def test_a_key_prefix_that_would_break_the_hash_tag_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"cluster\.key_prefix must be a non-empty word"):
        load_config(environ={"CATSOCK_CLUSTER__KEY_PREFIX": prefix})


def test_a_bad_url_with_a_password_does_not_show_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"CATSOCK_CLUSTER__REDIS": "redis://u:topsecret@h:nope/0"})
    assert "topsecret" not in str(caught.value)


async def test_a_node_whose_redis_is_down_does_not_start(
    redis: RedisServer, tmp_path: Path
) -> None:
    await redis.stop()  # a port where nothing listens now
    config = load_config(
        environ={},
        overrides={
            "port": 0,
            "database": str(tmp_path / "node.db"),
            "cluster": {"redis": redis.url, "timeout": 1.0},
        },
    )
    gateway = Gateway(config)
    with trio.fail_after(20), pytest.raises(StartupError, match=r"cluster\.redis: cannot reach"):
        await gateway.serve()

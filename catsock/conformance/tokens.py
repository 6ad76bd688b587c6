"""The token kinds a run is given, the target's limits as the run assumes them
(``TargetLimits``: catsock's defaults unless told otherwise), and the runner's
model of each token's rate-limit bucket (§9), which paces what the runner sends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs
import trio

from protocol import DEFAULT_RATE_LIMITS, FALLBACK_RATE_LIMIT, RateLimit

#: The token kinds a run can be given (``--token KIND=TOKEN``).
TOKEN_KINDS: Final = ("CATS", "AFAD", "DASHBOARD", "DASHBOARD@500")
#: The user the ``DASHBOARD@500`` token is bound to, as in the vectors.
BOUND_USER: Final = "500"
#: The pacing model refills a little slower than §9 says, to stay on the safe side.
_PACE_FACTOR: Final = 0.9


def _client_type(kind: str) -> str:
    return kind.partition("@")[0]


#: catsock's default auth deadline (docs/protocol.md §2).
DEFAULT_AUTH_TIMEOUT: Final = 10.0
#: catsock's default message size limit (docs/protocol.md §4.1).
DEFAULT_MAX_MESSAGE_SIZE: Final = 65536


@attrs.frozen(kw_only=True)
class JwtTarget:
    """What the expiry checks need to mint short-lived JWTs the target accepts
    (``jwt.secret``, ``issuer``, ``audience`` and ``leeway`` as it is configured;
    docs/protocol.md §2.1). Without one, those checks are skipped."""

    secret: str
    issuer: str = ""
    audience: str = ""
    leeway: float = 0.0


@attrs.frozen(kw_only=True)
class TargetLimits:
    """The limits the gateway under test is configured with (§2, §4.1, §9).

    The ``limits`` profile checks them, and the runner paces its traffic by
    ``rate_limits``. ``rate_limits`` is ``None`` when the target has none.
    A client type missing from it gets ``FALLBACK_RATE_LIMIT``.
    """

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    rate_limits: Mapping[str, RateLimit] | None = attrs.field(
        factory=lambda: dict(DEFAULT_RATE_LIMITS)
    )
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT

    def rate(self, client_type: str) -> RateLimit | None:
        if self.rate_limits is None:
            return None
        return self.rate_limits.get(client_type, FALLBACK_RATE_LIMIT)

    def rates_are_default(self) -> bool:
        """The rate limits the session vectors assume (catsock's defaults)."""
        if self.rate_limits is None:
            return False
        return all(self.rate(t) == limit for t, limit in DEFAULT_RATE_LIMITS.items())

    def is_default(self) -> bool:
        return (
            self.max_message_size == DEFAULT_MAX_MESSAGE_SIZE
            and self.auth_timeout == DEFAULT_AUTH_TIMEOUT
            and self.rates_are_default()
        )


class _Budget:
    """The runner's model of one token's rate-limit bucket (§9), assumed full at start."""

    def __init__(self, client_type: str, limits: TargetLimits | None = None) -> None:
        limit = (limits or TargetLimits()).rate(client_type)
        #: No rate limit at the target: nothing to pace.
        self.unlimited = limit is None
        self.capacity = 1.0 if limit is None else float(limit.burst)
        self.rate = 1.0 if limit is None else limit.per_minute / 60.0 * _PACE_FACTOR
        self._level = self.capacity
        self._stamp: float | None = None

    def level(self) -> float:
        now = trio.current_time()
        if self._stamp is not None:
            self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._level

    def spend(self, n: float = 1.0) -> None:
        self._level = max(0.0, self.level() - n)

    def drain(self) -> None:
        self.level()
        self._level = 0.0

    def wait_time(self, n: float) -> float:
        """Seconds until ``n`` tokens are modelled to be there."""
        if self.unlimited:
            return 0.0
        missing = min(n, self.capacity) - self.level()
        return max(0.0, missing / self.rate)

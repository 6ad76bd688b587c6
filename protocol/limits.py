"""Token-bucket rate limiting, pure: the caller passes the time in.

Defaults follow seed 000 §5.13 (CATS and AFAD 1,000 messages a minute,
DASHBOARD and anything else 100), but as a bucket rather than the seed's fixed
window, so a client can burst briefly and is never allowed 2x at a window edge.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

__all__ = ["DEFAULT_RATE_LIMITS", "FALLBACK_RATE_LIMIT", "RateLimit", "TokenBucket"]

#: Float dust, in tokens: far below one message, far above rounding error.
_EPSILON = 1e-6


@attrs.frozen(slots=True)
class RateLimit:
    """``per_minute`` sustained, ``burst`` at once."""

    per_minute: float
    burst: int

    def bucket(self, now: float) -> TokenBucket:
        return TokenBucket(self.per_minute / 60.0, self.burst, now)


#: Seed 000 §5.13 allows ``per_minute`` messages in one 60-second window, all at
#: once if the client likes (a CATS flushing its fallback queue, §5.3, sends 1,000
#: together): the burst is the whole minute's allowance, so the defaults refuse
#: nothing the seed accepts. Per-identity buckets (catsock/server.py) keep several
#: connections of one token from multiplying it.
DEFAULT_RATE_LIMITS: Mapping[str, RateLimit] = {
    "CATS": RateLimit(1000, 1000),
    "AFAD": RateLimit(1000, 1000),
    "DASHBOARD": RateLimit(100, 100),
}
#: The seed's ``$this->limits[$client_type] ?? 100``.
FALLBACK_RATE_LIMIT = RateLimit(100, 100)


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up; starts full."""

    __slots__ = ("_stamp", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("a bucket needs a positive rate and a capacity of at least 1")
        self.rate = rate
        self.capacity = float(capacity)
        self._tokens = float(capacity)
        self._stamp = now

    def take(self, now: float, n: float = 1.0) -> float:
        """Take ``n`` tokens if there are enough and return 0.0; otherwise take
        nothing and return the seconds to wait until ``n`` would be there."""
        wait = self.wait(now, n)
        if not wait:
            self._tokens = max(0.0, self._tokens - n)
        return wait

    def wait(self, now: float, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are there (0.0: now); takes nothing."""
        self._refill(now)
        # Tolerate float dust: a client that waited exactly the hint must pass.
        missing = n - self._tokens
        return 0.0 if missing <= _EPSILON else missing / self.rate

    def peek(self, now: float) -> float:
        """Tokens available at ``now`` (for introspection and tests)."""
        self._refill(now)
        return self._tokens

    def _refill(self, now: float) -> None:
        # A clock that goes backwards (it should not) must not mint tokens.
        elapsed = max(0.0, now - self._stamp)
        self._stamp = max(self._stamp, now)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)

"""The token kinds a run is given, and the runner's model of each token's
rate-limit bucket (§9), which paces what the runner sends."""

from __future__ import annotations

from typing import Final

import trio

from protocol import DEFAULT_RATE_LIMITS

#: The token kinds a run can be given (``--token KIND=TOKEN``).
TOKEN_KINDS: Final = ("CATS", "AFAD", "DASHBOARD", "DASHBOARD@500")
#: The user the ``DASHBOARD@500`` token is bound to, as in the vectors.
BOUND_USER: Final = "500"
#: The pacing model refills a little slower than §9 says, to stay on the safe side.
_PACE_FACTOR: Final = 0.9


def _client_type(kind: str) -> str:
    return kind.partition("@")[0]


class _Budget:
    """The runner's model of one token's rate-limit bucket (§9), assumed full at start."""

    def __init__(self, client_type: str) -> None:
        limit = DEFAULT_RATE_LIMITS.get(client_type, DEFAULT_RATE_LIMITS["DASHBOARD"])
        self.capacity = float(limit.burst)
        self.rate = limit.per_minute / 60.0 * _PACE_FACTOR
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
        missing = min(n, self.capacity) - self.level()
        return max(0.0, missing / self.rate)

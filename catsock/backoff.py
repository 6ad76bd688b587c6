"""Reconnect delays: exponential backoff with jitter (seed 000 §5.5, ``SocketRetryStrategy``).

``Backoff(base=2.0, factor=2.0, cap=60.0, jitter=0.2)`` gives, for the n-th
consecutive failed attempt (n = 1, 2, ...), ``min(cap, base * factor ** (n - 1))``
scaled by a random factor drawn uniformly from ``[1 - jitter, 1 + jitter]``:
about 2, 4, 8, 16, 32, 60, 60, ... seconds, each ±20 %. The cap applies before
the jitter, as in the seed, so a capped delay lies in [48, 72] seconds; the
jitter spreads out clients that all lost the same gateway at once.

(The seed's ``getDelay`` always *adds* 16–24 % and truncates to whole seconds;
catsock centres the jitter on the nominal delay and keeps fractions.)

Pure and synchronous: the random source is passed in, so tests pin it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import attrs

__all__ = ["Backoff"]


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _jitter_range(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"jitter must be within [0, 1], got {value!r}")


def _factor_range(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 1:
        raise ValueError(f"factor must be >= 1, got {value!r}")


@attrs.frozen
class Backoff:
    """How long to wait before reconnect attempt n; see the module docstring."""

    base: float = attrs.field(default=2.0, validator=_non_negative)
    factor: float = attrs.field(default=2.0, validator=_factor_range)
    cap: float = attrs.field(default=60.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.2, validator=_jitter_range)

    def nominal(self, attempt: int) -> float:
        """The delay before attempt ``attempt`` (1-based) without jitter."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        delay = min(self.base, self.cap)
        # Multiply step by step: factor ** (attempt - 1) overflows a float long
        # before a client has retried that often, and the cap is reached early.
        for _ in range(attempt - 1):
            if delay >= self.cap or delay == 0 or self.factor == 1:
                break
            delay = min(self.cap, delay * self.factor)
        return delay

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The smallest and largest delay ``delay(attempt)`` can return."""
        nominal = self.nominal(attempt)
        return nominal * (1 - self.jitter), nominal * (1 + self.jitter)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before attempt ``attempt`` (1-based), jittered with ``rng``."""
        nominal = self.nominal(attempt)
        if not self.jitter:
            return nominal
        spread = (rng or _RNG).uniform(-self.jitter, self.jitter)
        return nominal * (1 + spread)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The delays before attempts 1, 2, 3, ... (endless)."""
        attempt = 1
        while True:
            yield self.delay(attempt, rng)
            attempt += 1


_RNG = random.Random()

"""What a conformance check can come to: the public results, and the outcomes a
check raises from inside to end itself (fail, skip, or retry once)."""

from __future__ import annotations

import enum

import attrs


class Status(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@attrs.frozen
class CheckResult:
    """One check's outcome. ``status`` is PASS, FAIL or SKIP; ``passed`` is true
    only for PASS (a skipped check neither passed nor failed). ``detail`` says
    what went wrong, why it was skipped, or what a passing check could not see."""

    name: str
    passed: bool
    detail: str
    seconds: float
    skipped: bool = attrs.field(default=False, kw_only=True)
    #: The profile the check belongs to (``seed``, ``strict``, ...).
    profile: str = attrs.field(default="", kw_only=True)
    #: What the check holds the gateway to, in one sentence.
    rule: str = attrs.field(default="", kw_only=True)
    #: Where docs/protocol.md states the rule, as ``§4.2``.
    section: str = attrs.field(default="", kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.passed and self.skipped:
            raise ValueError("a check cannot be both passed and skipped")

    @property
    def status(self) -> Status:
        if self.skipped:
            return Status.SKIP
        return Status.PASS if self.passed else Status.FAIL

    def where(self) -> str:
        """The rule and its section, as a failure line names them."""
        if not self.section:
            return self.rule
        return f"{self.rule} (docs/protocol.md {self.section})"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "profile": self.profile,
            "status": str(self.status),
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
            "rule": self.rule,
            "section": self.section,
        }


class GatewayUnreachable(Exception):
    """No WebSocket connection could be opened to the gateway at all."""


# -- outcomes inside a check ------------------------------------------------------------


class _Fail(Exception):
    """The gateway did something the spec does not allow (the message says what)."""


class _Skip(Exception):
    """The check cannot apply to this run."""


class _Retry(Exception):
    """A transient refusal the runner likely caused itself: a rate limit (``kind``
    names the token whose bucket to let refill) or a connection limit (``None``)."""

    def __init__(self, detail: str, kind: str | None, *, timing: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        #: The vector's "no time passes" assumption did not hold: inconclusive, not wrong.
        self.timing = timing

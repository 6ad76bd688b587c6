"""The network conformance runner: check any gateway against docs/protocol.md.

``run_conformance(url, tokens)`` drives a gateway over the network only, as a
client would: trio-websocket connections on ``url``, frames built by hand or
taken from the conformance vectors (``protocol.conformance``), and every reply
decoded with ``protocol.Codec``. It never imports or inspects a gateway's code,
so it checks catsock and any other implementation alike.

Checks come in profiles (``profiles``; docs/protocol.md §12.4): ``seed`` (seed
000 §4 and §7 only), ``strict`` (catsock's choices), ``extensions``, ``limits``
(as the target is configured, ``TargetLimits``) and the opt-in ``faults``, which
kills and restarts the target through ``ServerControl``. Each check names its
rule and its section of docs/protocol.md. A module of extra checks joins a
profile with one ``module_checks`` line in ``profiles.PROFILES``; its check
functions take a ``Ctx`` and end themselves with ``Fail`` or ``Skip``.

Tokens come one per kind: ``CATS``, ``AFAD``, ``DASHBOARD`` (an admin dashboard,
not bound to a user) and optionally ``DASHBOARD@500`` (a dashboard token bound
to user 500). A check that needs a token it was not given is reported as SKIP.

Every check is an independent async function with its own connections, run
under its own ``trio.fail_after(timeout)``; checks run one after another, so the
gateway should carry no other traffic for these client types during a run.
"Nothing arrived" is proven with a barrier: the connection sends ``ping`` and
everything before the ``pong`` is what arrived. The runner paces what it sends
to stay inside the rate limits of §9, which it models per token (it assumes the
tokens were idle before the run); time spent pacing, and the ``wait`` of a
session vector, does not count against a check's timeout. A check that still
meets an unexpected ``RATE_LIMIT_EXCEEDED`` (or ``CONNECTION_LIMIT``) is run once
more after the token's bucket had time to refill.

The modules, in the order they build on each other:

- ``results``: ``CheckResult``, ``Status``, and the outcomes a check raises.
- ``tokens``: the token kinds, ``TargetLimits`` and the pacing model of the
  rate limits.
- ``server``: ``ServerControl``, the target's process for the faults profile.
- ``frames``: the event frames the checks publish.
- ``conn``: one client connection and the ``expect_*`` helpers checks use.
- ``runner``: how one check runs (``_Runner``) and what it is given (``_Ctx``).
- ``seed``: the seed profile's checks.
- ``fixed``: strict's hand-written auth, ping and routing checks.
- ``decode_vectors`` / ``session_vectors``: the checks driven by the vectors,
  and which profile and section each belongs to.
- ``extensions``, ``limits``, ``faults``: those profiles' hand-written checks.
- ``expiry``: credentials that expire and their refresh (the ``jwt.`` checks of
  ``extensions``, run when given the target's JWT secret, ``JwtTarget``).
- ``profiles``: the registry of profiles and ``module_checks``.
- ``suite``: ``plan``, ``estimate``, ``run_conformance`` and ``check_names``.
- ``report``: what the command prints, and its ``--json`` report.
"""

from __future__ import annotations

from .profiles import DEFAULT_PROFILES, PROFILES, Profile, module_checks, needs, section, waits
from .results import CheckResult, GatewayUnreachable, Status
from .results import _Fail as Fail
from .results import _Skip as Skip
from .runner import _Ctx as Ctx
from .server import ServerControl, ServerFailed
from .suite import Planned, check_names, estimate, plan, run_conformance
from .tokens import TOKEN_KINDS, JwtTarget, TargetLimits

__all__ = [
    "DEFAULT_PROFILES",
    "PROFILES",
    "TOKEN_KINDS",
    "CheckResult",
    "Ctx",
    "Fail",
    "GatewayUnreachable",
    "JwtTarget",
    "Planned",
    "Profile",
    "ServerControl",
    "ServerFailed",
    "Skip",
    "Status",
    "TargetLimits",
    "check_names",
    "estimate",
    "module_checks",
    "needs",
    "plan",
    "run_conformance",
    "section",
    "waits",
]

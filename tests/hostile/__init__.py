"""The attack suite (issue 16): hostile clients against a live gateway, a canary watching.

Rules (besides those of tests/conftest.py):

- Every attack runs inside ``arena.attack(**config)`` (conftest.py): a real
  gateway in-process (the ``start_gateway`` fixture) on real loopback sockets,
  and a **canary** in a thread of its own: one CATS publishing a conversion 20
  times a second to one AFAD (canary.py). On leaving, the test fails unless
  every canary event arrived, in order, exactly once, neither canary client met
  an error or a close, the ``catsock`` loggers recorded no traceback and nothing
  at ERROR, and ``stats.internal_errors`` is 0.
- The canary's latency is **reported, never asserted**: ``record_property``
  (``canary_max_latency_ms``, in the JUnit XML), a line on stdout, and a table
  at the end of the run. The assertions are about outcomes (a status, a close
  code, what was published), never about how long something took.
- The real clock, with deadlines shortened where an attack waits for one
  (``http.request_timeout``, ``auth_timeout`` of 1 s) so that each attack is
  real and short; ``fail_after`` bounds every test. The whole directory runs in
  35-45 s on two cores.
- Attackers connect from ``127.0.0.2`` and up, legitimate clients and the
  canary from ``127.0.0.1`` (tools.py), so per-address limits see two hosts.
- An attack the runtime does not withstand yet is ``xfail(strict=True)`` with
  what was measured; a strict xfail that starts passing fails the run, which is
  the signal to drop the mark.

The attacks, by file:

test_ws_frames.py
    empty-fragment floods (one connection without a token, one with, ten
    without); frame headers announcing 2^62, 2^63 - 1, 2^63 and 4 x the limit
    + 1 bytes; oversize messages, whole and in 100 or 500 fragments, up to 4
    MiB; a ping-frame flood that never reads its pongs; JSON ping floods before
    and after auth; invalid UTF-8 (bad byte, split character, surrogate,
    overlong, binary).
test_exhaustion.py
    1,000 never-authenticating handshakes from one address against a cap of
    1,000 (legitimate clients must still connect); 500 never-authenticating
    connections cut at the auth deadline; slowloris on the request head, the
    WebSocket handshake, a publish body and the auth message.
test_resets.py
    TCP RST (SO_LINGER {1, 0}) mid-head, before and after the 101, mid-frame,
    before and after ``100 Continue``, mid-body: no traceback, nothing above
    DEBUG.
test_http_attacks.py
    chunked bodies of 1-byte chunks from 50 connections (no token, a path that
    takes no body, a valid token); oversize and lying bodies (Content-Length
    over the limit, longer or shorter than the body, twice); Content-Length
    with chunked; path traversal on /static; hostile handshakes (version, key,
    method, HTTP/1.0, path); foreign origins (CSWSH).
test_auth_attacks.py
    guessing tokens from one address (32 WebSocket and 8 HTTP clients); bad,
    huge and non-string tokens and client types; concurrent first auths of a
    new token; a revoked token on HTTP at once, and on a live connection;
    tokens never in the SQLite files, the logs or /metrics.
test_message_attacks.py
    nesting past 32 levels, duplicate keys, NaN / Infinity, numbers beyond a
    double or an integer, lone surrogates (WebSocket and HTTP); spoofed senders;
    script in a payload (delivered as data, CSP, no HTML-writing code);
    redaction keys in any case.
test_delivery_attacks.py
    a dashboard that stops reading; a slow dashboard that is cut (SLOW_CONSUMER
    and 4001); publish floods against the rate limits (two connections and
    HTTP); a user-bound dashboard fishing for others' events (resume since 0,
    long-poll since 0); metric label sets under bogus types, paths, methods and
    client types from ten addresses.
test_lost_reads.py
    not an attack but what the canary found: bytes a connection's reader took
    from the socket are lost when its deadline fires right after the read.

Run: ``python -m pytest -q -p no:cacheprovider tests/hostile``.
"""

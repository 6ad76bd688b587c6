"""The upgrade head's fast parser against h11: it accepts only what h11 accepts,
with the same meaning, and it does accept what real WebSocket clients send."""

from __future__ import annotations

import h11
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from catsock.transport import fasthead

BROWSER = (
    b"GET /ws HTTP/1.1\r\nHost: gateway.example:8765\r\nConnection: Upgrade\r\n"
    b"Pragma: no-cache\r\nCache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux"
    b" x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\nOrigin: http://gateway.example:8765\r\n"
    b"Sec-WebSocket-Version: 13\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: ja,en-US;q=0.9\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)
#: The seed 000 PHP client's request (§4), a trio-websocket one, a websockets one.
PHP = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8765\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
TRIO_WEBSOCKET = (
    b"GET /ws?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8765\r\nUpgrade: WebSocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
WEBSOCKETS = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8765\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate;"
    b" client_max_window_bits\r\nUser-Agent: Python/3.11 websockets/12.0\r\n\r\n"
)


def h11_view(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    """What the front door's h11 path makes of ``head``: method, target, headers."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key, text = name.decode("ascii"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return event.method.decode(), event.target.decode("latin-1"), headers


@pytest.mark.parametrize("head", [BROWSER, PHP, TRIO_WEBSOCKET, WEBSOCKETS])
def test_real_clients_heads_take_the_fast_path_and_mean_what_h11_says(head: bytes) -> None:
    fast = fasthead.parse(head)
    assert fast is not None
    assert h11_view(head) == ("GET", *fast)


@pytest.mark.parametrize(
    "head",
    [
        PHP.replace(b"GET", b"POST"),
        PHP.replace(b"HTTP/1.1", b"HTTP/1.0"),
        PHP.replace(b"Host: 127.0.0.1:8765\r\n", b""),
        PHP.replace(b"\r\n\r\n", b"\r\nHost: other\r\n\r\n"),
        PHP.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"),
        PHP.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"),
        PHP.replace(b"Upgrade: websocket\r\n", b"Upgrade: websocket\r\n folded\r\n"),
        PHP.replace(b"Upgrade: websocket\r\n", b"Upgrade : websocket\r\n"),
        PHP.replace(b"Upgrade: websocket\r\n", b"Upgrade: web\x00socket\r\n"),
        PHP.replace(b"\r\n", b"\n"),
        PHP.replace(b"GET /ws", b"GET http://127.0.0.1/ws"),
    ],
    ids=[
        "post",
        "http-1.0",
        "no-host",
        "two-hosts",
        "content-length",
        "chunked",
        "obs-fold",
        "space-before-colon",
        "nul-in-value",
        "bare-lf",
        "absolute-form",
    ],
)
def test_anything_else_is_left_to_h11(head: bytes) -> None:
    assert fasthead.parse(head) is None


#: Characters a head may hold, and (drawn as often) ones that break it.
_good = st.sampled_from([*b"aZ9/:?=-_.~ ", 0x09, 0x80, 0xFF])
_bad = st.sampled_from([0x00, 0x0D, 0x0A, 0x7F, 0x01])
_clean = st.lists(_good, max_size=30).map(bytes)
_broken = st.lists(st.one_of(_good, _bad), max_size=30).map(bytes)
_text = st.one_of(_clean, _clean, _clean, _clean, _broken)
_target = st.one_of(st.sampled_from([b"ws", b"ws?a=b", b""]), _text)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """Heads near the fast shape: a request line and header lines, mostly well
    formed, each now and then broken."""
    line = draw(
        st.one_of(
            st.builds(lambda t: b"GET /" + t + b" HTTP/1.1", _target),
            st.sampled_from([b"GET /ws HTTP/1.1", b"GET / HTTP/1.0", b"PUT / HTTP/1.1"]),
        )
    )
    names = st.one_of(
        st.sampled_from([b"Host", b"Upgrade", b"X-A", b"x-a", b"Connection"]),
        st.sampled_from([b"Upgrade", b"X-B", b"Bad Name", b"", b"a\x80"]),
    )
    colons = st.sampled_from([b":", b": ", b":\t", b" :"])
    fields = st.builds(lambda n, c, v: n + c + v, names, colons, _text)
    lines = [line, *draw(st.lists(fields, max_size=4))]
    if draw(st.booleans()):
        lines.insert(draw(st.integers(1, len(lines))), b"Host: h")
    return b"\r\n".join(lines) + b"\r\n\r\n"


@given(head=heads())
@example(head=b"GET / HTTP/1.1\r\nHost:\r\n\r\n")
@example(head=b"GET / HTTP/1.1\r\nHost: a \t\r\nX-A: \x80\xff\r\n\r\n")
def test_whatever_the_fast_parser_accepts_h11_accepts_the_same(head: bytes) -> None:
    fast = fasthead.parse(head)
    if fast is not None:
        assert h11_view(head) == ("GET", *fast)

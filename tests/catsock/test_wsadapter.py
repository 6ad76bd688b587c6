"""The frame-once adapter: its framing is RFC 6455 and its view of trio-websocket holds."""

from __future__ import annotations

import pytest
import wsproto
import wsproto.events as ev

from catsock.wsadapter import InternalsChanged, check_internals, text_frame


def _pair() -> tuple[wsproto.WSConnection, wsproto.WSConnection]:
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server.receive_data(client.send(ev.Request(host="x", target="/ws")))
    (request,) = server.events()
    assert isinstance(request, ev.Request)
    client.receive_data(server.send(ev.AcceptConnection()))
    assert isinstance(next(client.events()), ev.AcceptConnection)
    return server, client


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_is_what_wsproto_reads_and_what_it_would_write(size: int) -> None:
    text = "あ" * (size // 3) + "x" * (size % 3)  # exactly ``size`` UTF-8 bytes
    assert len(text.encode()) == size
    server, client = _pair()
    client.receive_data(text_frame(text) + text_frame("next"))
    received = [e for e in client.events() if isinstance(e, ev.TextMessage)]
    assert [(m.data, m.message_finished) for m in received] == [(text, True), ("next", True)]
    assert text_frame(text) == bytes(server.send(ev.TextMessage(data=text)))


def test_check_internals_fails_loudly_on_a_different_object() -> None:
    with pytest.raises(InternalsChanged, match="wsadapter"):
        check_internals(object())  # type: ignore[arg-type]

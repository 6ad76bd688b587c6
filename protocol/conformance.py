"""Load the conformance vectors in ``protocol/vectors/*.json`` as typed objects.

Decode vectors pin what ``Codec.decode`` makes of one frame; session vectors pin
what a gateway answers to a sequence of frames on one connection. The unit tests
drive ``Codec`` and ``ConnectionMachine`` through them, and a network runner can
replay the same data against a live gateway. The format is in docs/protocol.md
§"Conformance vectors". Pure data: no I/O beyond reading the package's files.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, Final, Literal

import attrs

from .errors import CloseCode, ErrorCode

__all__ = [
    "MISSING",
    "SESSIONS_FILE",
    "DecodeVector",
    "ExpectClose",
    "ExpectError",
    "ExpectHeartbeat",
    "ExpectPublish",
    "ExpectSend",
    "ExpectSubscribe",
    "ExpectVerify",
    "Expectation",
    "RepeatedInput",
    "SessionStep",
    "SessionVector",
    "VectorFormatError",
    "load_decode_vectors",
    "load_session_vectors",
    "lookup",
    "vector_files",
]

#: The file holding session vectors; every other ``*.json`` holds decode vectors.
SESSIONS_FILE: Final = "sessions.json"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: ``lookup``'s answer for a path that names nothing.
MISSING: Final = _Missing()


class VectorFormatError(ValueError):
    """A vector file does not follow the documented format."""


# --- inputs --------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RepeatedInput:
    """``prefix + repeat * times + suffix``: a long frame without a long file.

    ``binary`` makes the frame bytes (a binary WebSocket frame, UTF-8 encoded).
    """

    prefix: str
    repeat: str
    times: int
    suffix: str = ""
    binary: bool = False

    def data(self) -> str | bytes:
        text = self.prefix + self.repeat * self.times + self.suffix
        return text.encode("utf-8") if self.binary else text


Frame = str | bytes | RepeatedInput


def _frame_data(frame: Frame) -> str | bytes:
    return frame.data() if isinstance(frame, RepeatedInput) else frame


# --- decode vectors ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DecodeVector:
    """One frame and what decoding it must give.

    Exactly one of ``type`` (accepted: the decoded message's ``type``) and
    ``error`` (refused: the ``ProtocolError`` code, with ``close`` the close code
    or ``None``) is set. ``fields`` maps dotted paths (see ``lookup``) to values
    the decoded message must have.
    """

    name: str
    description: str
    file: str
    input: Frame
    type: str | None = None
    fields: Mapping[str, Any] = attrs.field(factory=dict)
    error: ErrorCode | None = None
    close: CloseCode | None = None

    @property
    def accepts(self) -> bool:
        return self.type is not None

    def data(self) -> str | bytes:
        """The frame: ``str`` for a text frame, ``bytes`` for a binary one."""
        return _frame_data(self.input)


# --- session vectors -----------------------------------------------------------


@attrs.frozen(kw_only=True)
class ExpectSend:
    """The gateway sends a control message of ``type`` (not ``error``); its JSON
    has the ``fields`` values and none of the ``absent`` keys (dotted paths)."""

    type: str
    fields: Mapping[str, Any] = attrs.field(factory=dict)
    absent: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class ExpectError:
    """The gateway sends ``error`` with ``payload.error_code == code``, then closes
    with ``close`` (``None``: stays open). ``retry_after``, when given, is the
    expected ``payload.retry_after``."""

    code: ErrorCode
    close: CloseCode | None
    retry_after: float | None = None


@attrs.frozen(kw_only=True)
class ExpectClose:
    """The gateway closes with ``code`` without sending an ``error`` first."""

    code: CloseCode


@attrs.frozen(kw_only=True)
class ExpectPublish:
    """The event is published to exactly these channels, in this order."""

    channels: tuple[str, ...]


@attrs.frozen(kw_only=True)
class ExpectSubscribe:
    """The connection joins these channels (not visible on the wire)."""

    channels: tuple[str, ...]


@attrs.frozen(kw_only=True)
class ExpectVerify:
    """The gateway checks the credentials of the ``auth`` (not visible on the wire)."""


@attrs.frozen(kw_only=True)
class ExpectHeartbeat:
    """The gateway starts WebSocket-level pings every ``interval`` seconds."""

    interval: float


Expectation = (
    ExpectSend
    | ExpectError
    | ExpectClose
    | ExpectPublish
    | ExpectSubscribe
    | ExpectVerify
    | ExpectHeartbeat
)


@attrs.frozen(kw_only=True)
class SessionStep:
    """One thing the client does, and everything the gateway must do in answer.

    ``send`` is a frame; ``send is None`` means the client stays silent until the
    gateway's deadline passes (auth timeout, or heartbeat silence once a
    heartbeat runs). ``wait`` seconds pass before the step. The step happens
    ``repeat`` times, each time with the same ``expect``. ``auth`` says how the
    credential check of an ``auth`` frame ends; ``reject_code`` is the error code
    of a rejection (``AUTH_FAILED`` unless the vector says otherwise).
    """

    send: Frame | None
    expect: tuple[Expectation, ...]
    wait: float = 0.0
    repeat: int = 1
    auth: Literal["accept", "reject"] | None = None
    reject_code: ErrorCode = ErrorCode.AUTH_FAILED

    @property
    def is_timeout(self) -> bool:
        return self.send is None

    def data(self) -> str | bytes:
        if self.send is None:
            raise ValueError("a timeout step sends nothing")
        return _frame_data(self.send)


@attrs.frozen(kw_only=True)
class SessionVector:
    """A connection of ``client_type`` (its token bound to ``user_id``, if set)."""

    name: str
    description: str
    client_type: str
    steps: tuple[SessionStep, ...]
    user_id: str | None = None


# --- parsing -------------------------------------------------------------------


def lookup(value: Any, path: str) -> Any:
    """Follow a dotted ``path`` through attrs instances, objects and arrays
    (a numeric segment indexes an array). Returns ``MISSING`` if any segment
    names nothing."""
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, MISSING)
        elif isinstance(value, list | tuple):
            if not part.isdigit() or int(part) >= len(value):
                return MISSING
            value = value[int(part)]
        elif attrs.has(type(value)):
            value = getattr(value, part, MISSING)
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def _require(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    # bool is an int subclass in Python, but not an integer in JSON.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise VectorFormatError(f"{where}: {key!r} must be a {kind.__name__}")
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise VectorFormatError(f"{where}: expected an object")
    return value


def _close_code(value: Any, where: str) -> CloseCode | None:
    if value is None:
        return None
    try:
        return CloseCode(value)
    except ValueError:
        raise VectorFormatError(f"{where}: unknown close code {value!r}") from None


def _error_code(value: Any, where: str) -> ErrorCode:
    try:
        return ErrorCode(value)
    except ValueError:
        raise VectorFormatError(f"{where}: unknown error code {value!r}") from None


def _repeated(obj: Any, where: str) -> RepeatedInput:
    spec = _object(obj, where)
    times = _require(spec, "times", int, where)
    if times < 0:
        raise VectorFormatError(f"{where}: 'times' must not be negative")
    return RepeatedInput(
        prefix=_require(spec, "prefix", str, where),
        repeat=_require(spec, "repeat", str, where),
        times=times,
        suffix=_require(spec, "suffix", str, where) if "suffix" in spec else "",
        binary=_require(spec, "binary", bool, where) if "binary" in spec else False,
    )


def _frame(obj: Mapping[str, Any], keys: tuple[str, str, str], where: str) -> Frame | None:
    text_key, b64_key, repeat_key = keys
    given = [k for k in keys if k in obj]
    if len(given) > 1:
        raise VectorFormatError(f"{where}: give only one of {', '.join(keys)}")
    if text_key in given:
        return str(_require(obj, text_key, str, where))
    if b64_key in given:
        return base64.b64decode(_require(obj, b64_key, str, where), validate=True)
    if repeat_key in given:
        return _repeated(obj[repeat_key], where)
    return None


def _decode_vector(obj: Any, file: str, index: int) -> DecodeVector:
    where = f"{file}[{index}]"
    vec = _object(obj, where)
    name = _require(vec, "name", str, where)
    where = f"{file}:{name}"
    frame = _frame(vec, ("input", "input_base64", "input_repeat"), where)
    if frame is None:
        raise VectorFormatError(f"{where}: no input")
    expect = _object(vec.get("expect"), f"{where}.expect")
    if ("type" in expect) == ("error" in expect):
        raise VectorFormatError(f"{where}: expect needs exactly one of 'type' and 'error'")
    if "type" in expect:
        return DecodeVector(
            name=name,
            description=_require(vec, "description", str, where),
            file=file,
            input=frame,
            type=_require(expect, "type", str, where),
            fields=_object(vec.get("fields", {}), f"{where}.fields"),
        )
    if "close" not in expect:
        raise VectorFormatError(f"{where}: an error expectation needs 'close' (int or null)")
    return DecodeVector(
        name=name,
        description=_require(vec, "description", str, where),
        file=file,
        input=frame,
        error=_error_code(expect["error"], where),
        close=_close_code(expect["close"], where),
    )


def _channels(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise VectorFormatError(f"{where}: expected a list of channel names")
    return tuple(value)


def _expectation(obj: Any, where: str) -> Expectation:
    exp = _object(obj, where)
    if "error" in exp:
        if "close" not in exp:
            raise VectorFormatError(f"{where}: an error expectation needs 'close'")
        retry = exp.get("retry_after")
        if retry is not None and (isinstance(retry, bool) or not isinstance(retry, int | float)):
            raise VectorFormatError(f"{where}: 'retry_after' must be a number")
        return ExpectError(
            code=_error_code(exp["error"], where),
            close=_close_code(exp["close"], where),
            retry_after=None if retry is None else float(retry),
        )
    if "type" in exp:
        absent = exp.get("absent", [])
        if not isinstance(absent, list) or not all(isinstance(a, str) for a in absent):
            raise VectorFormatError(f"{where}: 'absent' must be a list of paths")
        if exp["type"] == "error":
            raise VectorFormatError(f"{where}: use {{'error': CODE, 'close': ...}} for errors")
        return ExpectSend(
            type=_require(exp, "type", str, where),
            fields=_object(exp.get("fields", {}), f"{where}.fields"),
            absent=tuple(absent),
        )
    if "close" in exp:
        code = _close_code(exp["close"], where)
        if code is None:
            raise VectorFormatError(f"{where}: 'close' alone needs a close code")
        return ExpectClose(code=code)
    if "publish" in exp:
        return ExpectPublish(channels=_channels(exp["publish"], where))
    if "subscribe" in exp:
        return ExpectSubscribe(channels=_channels(exp["subscribe"], where))
    if exp.get("verify") is True:
        return ExpectVerify()
    if "heartbeat" in exp:
        interval = exp["heartbeat"]
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise VectorFormatError(f"{where}: 'heartbeat' must be a number")
        return ExpectHeartbeat(interval=float(interval))
    raise VectorFormatError(f"{where}: unknown expectation {sorted(exp)}")


def _closes(expectation: Expectation) -> bool:
    if isinstance(expectation, ExpectError):
        return expectation.close is not None
    return isinstance(expectation, ExpectClose)


def _step(obj: Any, where: str) -> SessionStep:
    spec = _object(obj, where)
    frame = _frame(spec, ("send", "send_base64", "send_repeat"), where)
    if frame is None and spec.get("timeout") is not True:
        raise VectorFormatError(f'{where}: a step sends a frame or has "timeout": true')
    raw_expect = spec.get("expect")
    if not isinstance(raw_expect, list):
        raise VectorFormatError(f"{where}: 'expect' must be a list")
    auth = spec.get("auth")
    if auth not in (None, "accept", "reject"):
        raise VectorFormatError(f"{where}: 'auth' must be 'accept' or 'reject'")
    repeat = spec.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise VectorFormatError(f"{where}: 'repeat' must be a positive integer")
    wait = spec.get("wait", 0)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or wait < 0:
        raise VectorFormatError(f"{where}: 'wait' must be a non-negative number")
    return SessionStep(
        send=frame,
        expect=tuple(_expectation(e, f"{where}.expect[{i}]") for i, e in enumerate(raw_expect)),
        wait=float(wait),
        repeat=repeat,
        auth=auth,
        reject_code=_error_code(spec.get("reject_code", "AUTH_FAILED"), where),
    )


def _session_vector(obj: Any, index: int) -> SessionVector:
    where = f"{SESSIONS_FILE}[{index}]"
    vec = _object(obj, where)
    name = _require(vec, "name", str, where)
    where = f"{SESSIONS_FILE}:{name}"
    raw_steps = vec.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise VectorFormatError(f"{where}: 'steps' must be a non-empty list")
    steps = tuple(_step(s, f"{where}.steps[{i}]") for i, s in enumerate(raw_steps))
    for i, step in enumerate(steps[:-1]):
        if any(_closes(e) for e in step.expect):
            raise VectorFormatError(f"{where}: step {i} closes the connection but is not last")
    user_id = vec.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise VectorFormatError(f"{where}: 'user_id' must be a string")
    return SessionVector(
        name=name,
        description=_require(vec, "description", str, where),
        client_type=_require(vec, "client_type", str, where),
        steps=steps,
        user_id=user_id,
    )


def vector_files() -> list[str]:
    """Names of the vector files shipped in the package, sorted."""
    root = resources.files("protocol") / "vectors"
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".json"))


def _read(name: str) -> Sequence[Any]:
    text = (resources.files("protocol") / "vectors" / name).read_text(encoding="utf-8")
    data = json.loads(text)
    if not isinstance(data, list):
        raise VectorFormatError(f"{name}: the file must hold a JSON array")
    return data


def load_decode_vectors() -> list[DecodeVector]:
    """Every decode vector of every file except ``sessions.json``, file by file.

    Raises ``VectorFormatError`` for a malformed file or a repeated name.
    """
    vectors: list[DecodeVector] = []
    for name in vector_files():
        if name != SESSIONS_FILE:
            vectors.extend(_decode_vector(v, name, i) for i, v in enumerate(_read(name)))
    _check_unique(v.name for v in vectors)
    return vectors


def load_session_vectors() -> list[SessionVector]:
    """Every session vector of ``sessions.json``, in file order.

    Raises ``VectorFormatError`` for a malformed file or a repeated name.
    """
    vectors = [_session_vector(v, i) for i, v in enumerate(_read(SESSIONS_FILE))]
    _check_unique(v.name for v in vectors)
    return vectors


def _check_unique(names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise VectorFormatError(f"vector name {name!r} is used twice")
        seen.add(name)

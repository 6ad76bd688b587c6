"""The narrow services a connection is handed: who is connected, the event log, counters.

``Connection`` (catsock/connection.py) never sees the ``Gateway``: the gateway
passes itself as the ``Registry``, its ``Delivery`` as the ``DeliveryView``, and a
frozen ``ConnectionContext`` with the settings and sinks every connection shares.
Tests can hand a connection anything that fits these protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

import attrs

from protocol import Codec, ErrorCode, MachineConfig, Principal, TokenBucket
from protocol import messages as m
from protocol.privacy import Projections
from storage import LogRow

from .entries import Entry

if TYPE_CHECKING:
    from .connection import Connection
    from .transport.session import Session

__all__ = ["ConnectionContext", "DeliveryView", "Registry", "StatsSink"]


class StatsSink(Protocol):
    """The gateway's counters, as a connection reports into them."""

    #: Events queued and not yet written, by priority (``Connection._count``).
    backlog: list[int]

    def count_in(self, type_: str) -> None: ...
    def count_out(self, type_: str, n: int = 1) -> None: ...
    def count_error(self, code: str) -> None: ...
    def count_refused(self, reason: str) -> None: ...
    def count_delivered(self, n: int) -> None: ...
    def count_slow_consumer(self) -> None: ...


class Registry(Protocol):
    """Who is connected: the gateway's side of authentication, joining and leaving."""

    async def authenticate(
        self, conn: Connection, token: str, client_type: str
    ) -> Principal | tuple[str, ErrorCode]: ...
    async def reauthenticate(
        self, conn: Connection, token: str, client_type: str
    ) -> Principal | tuple[str, ErrorCode]: ...
    def identity_bucket(self, principal: Principal) -> TokenBucket | None: ...
    def connections_of(self, identity: str) -> int: ...
    def subscribe(self, conn: Connection, channels: Iterable[str]) -> None: ...
    def publish(self, event: m.Event, channels: tuple[str, ...], sender: Connection) -> None: ...
    def connection_ended(self, conn: Connection) -> None: ...


class DeliveryView(Protocol):
    """What a connection uses of the event log (``catsock.delivery.Delivery``)."""

    head: int

    def is_durable(self, principal: Principal) -> bool: ...
    async def start_positions(
        self,
        principal: Principal,
        channels: tuple[str, ...],
        since: int | None,
        *,
        others_online: bool = False,
    ) -> dict[str, int] | None: ...
    async def read(
        self, positions: Mapping[str, int], exclude_sender: str | None, limit: int
    ) -> tuple[list[Entry], int]: ...
    async def gap(self, positions: Mapping[str, int]) -> tuple[int, int] | None: ...
    def advance(self, identity: str, channels: Iterable[str], seq: int) -> None: ...
    def note(
        self,
        identity: str,
        kind: str,
        first: int,
        last: int,
        connection_id: str | None,
        detail: str | None = None,
        *,
        at: float | None = None,
    ) -> None: ...
    def expire(self, entry: Entry, identity: str, connection_id: str | None) -> None: ...
    def count_dropped(self, events: int = 1) -> None: ...
    def observe_latency(self, entry: Entry) -> None: ...
    def count_catchup(self) -> None: ...
    def count_unconfirmed(self, events: int) -> None: ...
    def later(self, recipient: Session) -> None: ...
    @property
    def live_budget(self) -> int | None: ...
    @property
    def congested(self) -> bool: ...
    async def room(self, hold: float | None = None) -> str | None: ...


@attrs.frozen
class ConnectionContext:
    """What every connection reads and reports to, fixed when the gateway starts."""

    codec: Codec
    machine_config: MachineConfig
    wall_clock: Callable[[], float]
    stats: StatsSink
    record_log: Callable[[LogRow], None]
    auth_timeout: float
    send_queue: int
    queue_full_grace: float
    replay_batch: int
    #: Frames larger than this close 1009 at once; between the codec's own limit
    #: and this one the peer gets a MESSAGE_TOO_LARGE error first.
    max_frame_size: int
    max_fragments: int = 1000
    #: Events a live-only recipient's queue may hold (``send_queue`` if smaller).
    live_send_queue: int = 2_000
    #: Bytes of events (their text) one connection's queue may hold.
    send_queue_bytes: int = 8 * 1024 * 1024
    #: Published events are in the event log: the message log does not copy them.
    events_logged: bool = True
    #: Seconds a durable client without acks must have taken an event in before it
    #: counts as delivered (0: as soon as it is written).
    legacy_confirm: float = 1.0
    #: What each recipient class is sent of each event type (docs/privacy.md).
    projections: Projections = attrs.Factory(Projections)

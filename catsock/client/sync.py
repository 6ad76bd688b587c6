"""The synchronous runtime: a client for Django, Flask, cron scripts and other plain code.

A background thread owns the connection: it runs the asyncio client (aio.py) on
an event loop of its own, so every decision is still the sans-IO core's::

    from catsock.client.sync import Client

    client = Client(url, token, "CATS", outbox_path="outbox.db")
    message_id = client.publish("conversion", payload)          # stored, returns at once
    accepted = client.publish_and_wait("conversion", payload, timeout=5.0)

    @client.on("adware_update")
    def handle(event: ReceivedEvent) -> None: ...

- ``publish`` never waits for the network: it writes the event to the outbox
  (PENDING) in the calling thread, hands it to the background thread and
  returns its ``message_id``. The thread sends it and settles the row on
  ``accepted``; an event refused or undelivered stays visible in the outbox.
  A failed push therefore never breaks the business operation (seed 001).
- Safe from many threads (one lock around the hand-over), across ``fork``
  (gunicorn, uWSGI: a child never uses its parent's thread, socket or outbox
  handle; it opens its own on first use) and at interpreter exit (``close`` with
  a bounded flush runs from ``atexit``).
- Handlers run one at a time, in order, in a handler thread of their own, so a
  slow handler never stalls the connection's heartbeat; ``events()`` is a
  blocking iterator.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from storage.outbox import Outbox

from . import aio, sansio
from .sansio import MAX_MESSAGE_SIZE, ClientProtocol
from .values import Accepted, ClientClosed, Handler, ReceivedEvent, new_message_id

__all__ = ["Client", "EventIterator", "connect"]

logger = logging.getLogger("catsock.client")

T = TypeVar("T")

#: Seconds ``close`` (and so interpreter exit) waits for pending publishes by default.
FLUSH_TIMEOUT = 5.0

# Every client of this process, for the fork and exit hooks; and what a forked child
# inherited from its parent's clients: kept referenced, never closed or collected
# here, because the parent still uses them (closing an inherited SQLite handle in a
# child can corrupt the parent's locks).
_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()
_INHERITED: list[object] = []


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """The background loop's default executor: runs the outbox's short SQLite calls in
    the loop's own thread. A thread pool would refuse work once the interpreter starts
    exiting (``concurrent.futures`` shuts its pools down before ``atexit`` hooks run),
    and the exit flush must still record answers. (asyncio accepts only a
    ``ThreadPoolExecutor``; this one never starts a thread.)"""

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class Client:
    """A catsock client for synchronous code; options as for the trio ``Client``
    (docs/client.md §1), plus ``flush_timeout``: how long ``close`` (and interpreter
    exit) waits for pending publishes before leaving them PENDING in the outbox."""

    def __init__(
        self,
        url: str,
        token: str,
        client_type: str = "CATS",
        *,
        outbox_path: str | os.PathLike[str] | None = None,
        flush_timeout: float = FLUSH_TIMEOUT,
        max_message_size: int = MAX_MESSAGE_SIZE,
        **options: Any,
    ) -> None:
        sansio.parse_url(url)
        self.url = url
        self.client_type = client_type
        self.outbox_path = outbox_path
        self.flush_timeout = flush_timeout
        self._token = token
        self._options = {"max_message_size": max_message_size, **options}
        # An unknown option is a TypeError here, not in the background thread later.
        inspect.signature(aio.Client).bind(url, token, client_type, **self._options)
        self._envelopes = ClientProtocol(token, client_type, max_message_size=max_message_size)
        self._handlers: list[tuple[str, Handler]] = []
        self._closed = False
        self._reset()
        _CLIENTS.add(self)

    def _reset(self) -> None:
        """Nothing open: the state of a new client, and of one in a forked child."""
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aio: aio.Client | None = None
        self._outbox: Outbox | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._ready = threading.Event()
        self._fatal: BaseException | None = None

    # -- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._aio is not None and self._aio.connected and self._pid == os.getpid()

    @property
    def connection_id(self) -> str | None:
        return None if self._aio is None or not self.connected else self._aio.connection_id

    @property
    def connections(self) -> int:
        """Authenticated connections of this process's background thread so far."""
        return 0 if self._aio is None or self._pid != os.getpid() else self._aio.connections

    @property
    def last_error(self) -> BaseException | None:
        return self._fatal or (None if self._aio is None else self._aio.last_error)

    def start(self) -> None:
        """Start the background thread now rather than on first use (a receiver that only
        registered handlers calls this, or ``wait_connected``)."""
        self._started()

    def wait_connected(self, timeout: float | None = None) -> None:
        """Start the client if needed and wait for an authenticated connection
        (``TimeoutError`` after ``timeout`` seconds)."""
        client = self._started()
        self._call(client.wait_connected(), timeout)

    # -- publishing ----------------------------------------------------------------------

    def publish(
        self, type_: str, payload: Mapping[str, Any], *, message_id: str | None = None
    ) -> str:
        """Store the event in the outbox and hand it to the background thread; return its
        ``message_id`` at once, whatever the state of the connection. ``TypeError`` or
        ``PublishError`` (MESSAGE_TOO_LARGE) for an event that can never be sent,
        ``ClientClosed`` after ``close``. Without ``outbox_path`` the event lives in
        memory only until it is sent."""
        message_id = message_id or new_message_id()
        text = self._envelopes.envelope(type_, payload, message_id, time.time())
        with self._lock:
            client = self._started()
            if self._outbox is not None:
                self._outbox.add(message_id, type_, text)
            loop = self._loop
            assert loop is not None
            try:
                loop.call_soon_threadsafe(client._submit, message_id, type_, text)
            except RuntimeError:  # the thread ended (a fatal error): the row stays PENDING
                logger.warning(
                    "client stopped (%s): %s stays in the outbox", self._fatal, message_id
                )
        return message_id

    def publish_and_wait(
        self,
        type_: str,
        payload: Mapping[str, Any],
        *,
        message_id: str | None = None,
        timeout: float | None = None,
    ) -> Accepted:
        """Publish and wait for the gateway's answer: ``Accepted`` (with ``seq`` and
        ``duplicate``) or ``PublishError``. ``TimeoutError`` after ``timeout`` seconds;
        the event is stored by then and is still sent."""
        client = self._started()
        return self._call(client.publish(type_, payload, message_id=message_id), timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every publish so far has been answered and recorded in the outbox
        (``TimeoutError`` after ``timeout`` seconds)."""
        client = self._started()
        self._call(client.flush(), timeout)

    # -- receiving -----------------------------------------------------------------------

    def on(self, type_: str) -> Callable[[Handler], Handler]:
        """Decorator: call the handler for every event of ``type_`` (``"*"``: every event),
        in the client's handler thread. An exception is logged and the event still
        counts as handled."""

        def register(handler: Handler) -> Handler:
            self.add_handler(type_, handler)
            return handler

        return register

    def add_handler(self, type_: str, handler: Handler) -> None:
        with self._lock:
            self._handlers.append((type_, handler))
            if self._aio is not None and self._loop is not None and self._pid == os.getpid():
                self._loop.call_soon_threadsafe(
                    self._aio.add_handler, type_, self._in_pool(handler)
                )

    def remove_handler(self, type_: str, handler: Handler) -> None:
        """Unregister a handler (it still sees events that were already being handled)."""
        with self._lock:
            if (type_, handler) in self._handlers:
                self._handlers.remove((type_, handler))
                self._restart_handlers()

    def events(self, *, timeout: float | None = None) -> EventIterator:
        """A blocking iterator over received events, registered at once; ``timeout``
        bounds each wait (``TimeoutError``). An event is acknowledged when you come back
        for the next; close it (``with``) when you stop early."""
        client = self._started()
        stream = self._call(_on_loop(client.events), None)
        return EventIterator(self, stream, timeout)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self, *, flush_timeout: float | None = None) -> None:
        """Wait up to ``flush_timeout`` (default: the client's) for pending publishes, then
        acknowledge what was handled and close the connection with 1000. Whatever is
        still unanswered stays PENDING in the outbox for the next client."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._pid != os.getpid():
                self._forget_parent()
                return
            client, thread = self._aio, self._thread
        if client is not None and thread is not None and self._fatal is None:
            wait = self.flush_timeout if flush_timeout is None else flush_timeout
            with contextlib.suppress(TimeoutError, ClientClosed, RuntimeError):
                self._call(client.flush(), wait)
            with contextlib.suppress(ClientClosed, RuntimeError):
                self._call(client.aclose(), None)
        if thread is not None:
            thread.join()
        if self._outbox is not None:
            self._outbox.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the background thread -----------------------------------------------------------

    def _started(self) -> aio.Client:
        """The running asyncio client, started on first use (in this process)."""
        with self._lock:
            if self._pid != os.getpid():
                self._forget_parent()
            if self._closed:
                raise ClientClosed("the client is closed")
            if self._thread is None:
                if self.outbox_path is not None:
                    self._outbox = Outbox(self.outbox_path)
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="catsock-handlers"
                )
                self._thread = threading.Thread(
                    target=self._main, name="catsock-client", daemon=True
                )
                self._thread.start()
            self._ready.wait()
            if self._aio is None:
                raise ClientClosed(f"the client could not start: {self._fatal}")
            return self._aio

    def _main(self) -> None:
        # Not asyncio.run: its last step starts a thread to shut the default executor
        # down, which an exiting interpreter may refuse; this loop has no pool to stop.
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
            loop.run_until_complete(_end_calls())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        try:
            loop.set_default_executor(_InlineExecutor())
            client = aio.Client(
                self.url, self._token, self.client_type, outbox_path=self.outbox_path,
                **self._options,
            )  # fmt: skip
            for type_, handler in self._handlers:
                client.add_handler(type_, self._in_pool(handler))
            self._aio = client
        except BaseException as exc:
            self._fatal = exc
            raise
        finally:
            self._ready.set()
        try:
            await client.run()
        except Exception as exc:
            self._fatal = exc
            logger.error("the client stopped: %s", aio.describe(exc))

    def _in_pool(self, handler: Handler) -> Handler:
        """Run a sync handler in the handler thread (async ones on the loop)."""
        if inspect.iscoroutinefunction(handler):
            return handler
        pool = self._pool

        async def run(event: ReceivedEvent) -> None:
            await asyncio.get_running_loop().run_in_executor(pool, handler, event)

        run.__qualname__ = getattr(handler, "__qualname__", repr(handler))
        return run

    def _restart_handlers(self) -> None:
        client, loop = self._aio, self._loop
        if client is None or loop is None or self._pid != os.getpid():
            return

        def replace() -> None:
            client._handlers.clear()
            for type_, handler in self._handlers:
                client.add_handler(type_, self._in_pool(handler))

        loop.call_soon_threadsafe(replace)

    def _call(self, job: Coroutine[Any, Any, T], timeout: float | None) -> T:
        loop = self._loop
        if loop is None or loop.is_closed():
            job.close()
            raise ClientClosed(f"the client is closed ({self._fatal or 'closed'})")
        future = asyncio.run_coroutine_threadsafe(job, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout} s") from None
        except concurrent.futures.CancelledError:  # the background thread ended
            raise ClientClosed(f"the client is closed ({self._fatal or 'closed'})") from None

    def _forget_parent(self) -> None:
        """In a forked child: leave the parent's thread, socket and outbox handle to the
        parent (never used, closed or collected here) and open our own on next use."""
        _INHERITED.append((self._thread, self._loop, self._aio, self._outbox, self._pool))
        self._reset()


class EventIterator:
    """``for event in client.events()``: see ``Client.events``."""

    def __init__(self, client: Client, stream: aio.EventStream, timeout: float | None) -> None:
        self._client = client
        self._stream = stream
        self._timeout = timeout

    def __iter__(self) -> Iterator[ReceivedEvent]:
        return self

    def __next__(self) -> ReceivedEvent:
        try:
            return self._client._call(self._stream.__anext__(), self._timeout)
        except (StopAsyncIteration, ClientClosed):
            raise StopIteration from None

    def close(self, *, handled: bool = True) -> None:
        """Stop iterating; the event last returned counts as handled unless ``handled=False``."""
        with contextlib.suppress(ClientClosed, RuntimeError):
            self._client._call(self._stream.aclose(handled=handled), None)

    def __enter__(self) -> EventIterator:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.close(handled=exc_type is None)


def connect(url: str, token: str, client_type: str = "CATS", **options: Any) -> Client:
    """``with connect(url, token, "CATS", outbox_path=...) as client``: a ``Client`` that
    connects on first use and closes (with a bounded flush) when the block ends."""
    return Client(url, token, client_type, **options)


async def _end_calls() -> None:
    """Let the calls the client's end woke up finish (``aclose``), then end the ones
    still waiting (``wait_connected`` after a fatal error, say): they raise
    ``ClientClosed`` in their callers instead of waiting forever."""
    await asyncio.sleep(0)
    waiting = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def _on_loop(fn: Callable[[], T]) -> T:
    return fn()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._forget_parent()


def _at_exit() -> None:
    for client in list(_CLIENTS):
        if client._pid == os.getpid():
            with contextlib.suppress(Exception):
                client.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)

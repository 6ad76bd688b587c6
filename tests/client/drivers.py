"""The same blocking calls on every runtime, so one test body covers all three.

``open_client(runtime, url, token, client_type, **options)`` returns a ``Handle``.
For trio and asyncio the handle runs the runtime's own ``connect`` in a thread of
its own (``trio.run`` / an asyncio loop) and calls into it there; for the
synchronous runtime it calls the client directly. Every wait is bounded by
``TIMEOUT``: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from catsock.client import Accepted, ReceivedEvent, aio, sync
from catsock.client import connect as trio_connect

from .gateway import TIMEOUT

T = TypeVar("T")

RUNTIMES = ("trio", "asyncio", "sync")


class Handle:
    """A running client of one runtime, driven from the test's thread."""

    runtime: str

    def __init__(self) -> None:
        self.handled: list[ReceivedEvent] = []
        self._changed = threading.Condition()

    # Each runtime implements these.
    def publish(self, type_: str, payload: dict[str, Any], **kw: Any) -> Accepted:
        raise NotImplementedError

    def publish_nowait(self, type_: str, payload: dict[str, Any], **kw: Any) -> str:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def iterate(self) -> None:
        """Register the event iterator (``events()``)."""
        raise NotImplementedError

    def next_event(self) -> ReceivedEvent:
        raise NotImplementedError

    def add_handler(self, type_: str, handler: Callable[[ReceivedEvent], None]) -> None:
        raise NotImplementedError

    def connections(self) -> int:
        raise NotImplementedError

    def connected(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        """End the client the runtime's abrupt way: cancel its scope / task (the sync
        client has no cancellation: ``close``)."""
        raise NotImplementedError

    # Shared: handlers that record what they saw.
    def record(self, type_: str = "*") -> None:
        self.add_handler(type_, self._record)

    def _record(self, event: ReceivedEvent) -> None:
        with self._changed:
            self.handled.append(event)
            self._changed.notify_all()

    def wait_handled(self, count: int) -> list[ReceivedEvent]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.handled) >= count, TIMEOUT):
                raise AssertionError(f"{len(self.handled)} events handled, expected {count}")
            return list(self.handled)


class _ThreadHandle(Handle):
    """A client living in a thread of its own event loop."""

    def __init__(self) -> None:
        super().__init__()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _start(self, target: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()
        assert self._ready.wait(TIMEOUT), "the client did not connect"
        if self.error is not None:
            raise self.error

    def _join(self) -> None:
        assert self._thread is not None
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), f"the {self.runtime} client did not stop"
        if self.error is not None:
            raise self.error


class TrioHandle(_ThreadHandle):
    runtime = "trio"

    def __init__(self, url: str, token: str, client_type: str, **options: Any) -> None:
        super().__init__()
        self._args = (url, token, client_type)
        self._options = options
        self._scope = trio.CancelScope()
        self._start(lambda: trio.run(self._main))

    async def _main(self) -> None:
        self._trio = trio.lowlevel.current_trio_token()
        try:
            with self._scope:
                async with trio_connect(*self._args, **self._options) as client:
                    self.client = client
                    self._ready.set()
                    await trio.sleep_forever()
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def _run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        async def bounded() -> T:
            with trio.fail_after(TIMEOUT):
                return await fn(*args)

        return trio.from_thread.run(bounded, trio_token=self._trio)

    def _run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._trio)

    def publish(self, type_: str, payload: dict[str, Any], **kw: Any) -> Accepted:
        return self._run(lambda: self.client.publish(type_, payload, **kw))

    def publish_nowait(self, type_: str, payload: dict[str, Any], **kw: Any) -> str:
        async def enqueue() -> str:
            return (await self.client.enqueue(type_, payload, **kw)).message_id

        return self._run(enqueue)

    def flush(self) -> None:
        self._run(self.client.flush)

    def iterate(self) -> None:
        self._stream = self._run_sync(self.client.events)

    def next_event(self) -> ReceivedEvent:
        return self._run(self._stream.__anext__)

    def add_handler(self, type_: str, handler: Callable[[ReceivedEvent], None]) -> None:
        self._run_sync(self.client.add_handler, type_, handler)

    def connections(self) -> int:
        return self._run_sync(lambda: self.client.connections)

    def connected(self) -> bool:
        return self._run_sync(lambda: self.client.connected)

    def close(self) -> None:
        self._run(self.client.aclose)
        self.cancel()

    def cancel(self) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._run_sync(self._scope.cancel)
        self._join()


class AsyncioHandle(_ThreadHandle):
    runtime = "asyncio"

    def __init__(self, url: str, token: str, client_type: str, **options: Any) -> None:
        super().__init__()
        self._args = (url, token, client_type)
        self._options = options
        self._loop = asyncio.new_event_loop()
        self._start(self._loop_main)

    def _loop_main(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._task = asyncio.current_task()
        try:
            async with aio.connect(*self._args, **self._options) as client:
                self.client = client
                self._ready.set()
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def _run(self, job: Awaitable[T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(TIMEOUT):
                return await job

        return asyncio.run_coroutine_threadsafe(bounded(), self._loop).result(TIMEOUT + 1)

    def _run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        async def call() -> T:
            return fn(*args)

        return self._run(call())

    def publish(self, type_: str, payload: dict[str, Any], **kw: Any) -> Accepted:
        return self._run(self.client.publish(type_, payload, **kw))

    def publish_nowait(self, type_: str, payload: dict[str, Any], **kw: Any) -> str:
        async def enqueue() -> str:
            return (await self.client.enqueue(type_, payload, **kw)).message_id

        return self._run(enqueue())

    def flush(self) -> None:
        self._run(self.client.flush())

    def iterate(self) -> None:
        self._stream = self._run_sync(self.client.events)

    def next_event(self) -> ReceivedEvent:
        return self._run(self._stream.__anext__())

    def add_handler(self, type_: str, handler: Callable[[ReceivedEvent], None]) -> None:
        self._run_sync(self.client.add_handler, type_, handler)

    def connections(self) -> int:
        return self._run_sync(lambda: self.client.connections)

    def connected(self) -> bool:
        return self._run_sync(lambda: self.client.connected)

    def close(self) -> None:
        self._run(self.client.aclose())
        self.cancel()

    def cancel(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._join()


class SyncHandle(Handle):
    runtime = "sync"

    def __init__(self, url: str, token: str, client_type: str, **options: Any) -> None:
        super().__init__()
        self.client = sync.Client(url, token, client_type, **options)
        self.client.wait_connected(TIMEOUT)

    def publish(self, type_: str, payload: dict[str, Any], **kw: Any) -> Accepted:
        return self.client.publish_and_wait(type_, payload, timeout=TIMEOUT, **kw)

    def publish_nowait(self, type_: str, payload: dict[str, Any], **kw: Any) -> str:
        return self.client.publish(type_, payload, **kw)

    def flush(self) -> None:
        self.client.flush(TIMEOUT)

    def iterate(self) -> None:
        self._events = self.client.events(timeout=TIMEOUT)

    def next_event(self) -> ReceivedEvent:
        return next(self._events)

    def add_handler(self, type_: str, handler: Callable[[ReceivedEvent], None]) -> None:
        self.client.add_handler(type_, handler)

    def connections(self) -> int:
        return self.client.connections

    def connected(self) -> bool:
        return self.client.connected

    def close(self) -> None:
        self.client.close(flush_timeout=TIMEOUT)

    def cancel(self) -> None:
        self.client.close(flush_timeout=0)


def open_client(runtime: str, url: str, token: str, client_type: str, **options: Any) -> Handle:
    handles: dict[str, type[Handle]] = {
        "trio": TrioHandle,
        "asyncio": AsyncioHandle,
        "sync": SyncHandle,
    }
    return handles[runtime](url, token, client_type, **options)  # type: ignore[call-arg]

"""A real gateway in a thread of its own, for clients of any runtime.

``GatewayThread`` runs ``catsock.server.Gateway`` under ``trio.run`` in a
background thread (through the trio harness's ``GatewayFactory``, so internal
errors fail the test as everywhere else). ``stop()`` ends it and ``start()``
brings it back on the same port with the same database, which is how the suite
cuts every client's connection and makes it resume.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import trio

import storage
from tests.catsock.harness import GatewayFactory, RunningGateway
from tests.internal_errors import InternalErrors

#: Seconds any one wait of the suite may take before the test fails.
TIMEOUT = 20.0


class GatewayThread:
    def __init__(self, tmp_path: Path, errors: InternalErrors | None, **overrides: Any) -> None:
        self._tmp = tmp_path
        self._errors = errors
        self._overrides = overrides
        self.database = tmp_path / "gateway.db"
        self.port = 0
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.running: RunningGateway | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def token(self, name: str, client_type: str) -> str:
        db = storage.open_db(self.database)
        try:
            return storage.create_token(db, name=name, client_type=client_type)
        finally:
            db.close()

    def start(self) -> None:
        assert self._thread is None, "already running"
        self._ready.clear()
        self._thread = threading.Thread(target=self._main, name="gateway", daemon=True)
        self._thread.start()
        if not self._ready.wait(TIMEOUT) or self._failure is not None:
            raise RuntimeError("the gateway did not start") from self._failure

    def stop(self) -> None:
        thread, token, stop = self._thread, self._token, self._stop
        if thread is None or token is None or stop is None:
            return
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the gateway did not stop"
        self._thread = None
        if self._failure is not None:
            raise RuntimeError("the gateway failed") from self._failure

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported by start() / stop()
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            factory = GatewayFactory(nursery, self._tmp, self._errors)
            overrides = {"port": self.port, "database": str(self.database), **self._overrides}
            self.running = await factory(**overrides)
            self.port = self.running.port
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

"""The gateway's plain HTTP endpoints (docs/http-api.md), behind the front door.

``HttpApi.handle`` routes one request, read in full by ``catsock/frontdoor.py``,
to its endpoint and returns the response. Every error is JSON,
``{"error_code": ..., "error_message": ...}``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
import trio

import storage

from . import metrics
from .frontdoor import FrontDoor, Request, Response, error_response, json_response
from .static_files import static_response

if TYPE_CHECKING:
    from .server import Gateway

__all__ = ["HttpApi"]

Endpoint = Callable[[Request], Awaitable[Response]]

#: A /health answer is reused this long, so a busy health checker costs one probe a second.
HEALTH_CACHE_SECONDS = 1.0
#: How long the write probe may wait for SQLite's write lock.
HEALTH_PROBE_TIMEOUT = 2.0


@attrs.define
class HttpStats:
    #: Answers by (endpoint, status); endpoints are the route table's paths and "other".
    requests: dict[tuple[str, int], int] = attrs.Factory(dict)

    def count(self, endpoint: str, status: int) -> None:
        key = (endpoint, status)
        self.requests[key] = self.requests.get(key, 0) + 1


class HttpApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.stats = HttpStats()
        self.probe_timeout = HEALTH_PROBE_TIMEOUT
        self._shutting_down = False
        self._health_lock = trio.Lock()
        self._health: tuple[float, str | None] | None = None
        self._started = gateway.wall_clock()
        limits = gateway.config.limits
        self.front_door = FrontDoor(
            self.handle,
            gateway.config.http,
            # Characters are at most 4 UTF-8 bytes; the codec then applies the real limit.
            max_body=limits.max_message_size * 4,
            closing=lambda: self._shutting_down,
        )
        self.registry = metrics.new_registry(gateway)
        self.routes: dict[str, dict[str, Endpoint]] = {
            "/health": {"GET": self._get_health},
            "/metrics": {"GET": self._get_metrics},
            "/ws": {"GET": self._get_ws},
        }

    def shutdown(self) -> None:
        """The gateway is shutting down: /health says so, keep-alive ends."""
        self._shutting_down = True

    async def handle(self, request: Request) -> Response:
        methods = self.routes.get(request.path)
        if methods is None:
            found = static_response(request.path)
            if found is not None:
                response = self._static(request, *found)
                self.stats.count("static", response.status)
                return response
            response = error_response(404, "NOT_FOUND", f"no endpoint {request.path[:100]}")
            self.stats.count(metrics.OTHER, response.status)
            return response
        endpoint = methods.get(request.method)
        if endpoint is None:
            allow = ", ".join(methods)
            response = error_response(
                405,
                "METHOD_NOT_ALLOWED",
                f"{request.path} allows {allow}",
                (("allow", allow),),
            )
        else:
            response = await endpoint(request)
        self.stats.count(request.path, response.status)
        return response

    # -- endpoints -------------------------------------------------------------------

    def _static(
        self, request: Request, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> Response:
        """The dashboard's files (catsock/static_files.py), GET or HEAD."""
        if request.method not in ("GET", "HEAD"):
            return error_response(
                405,
                "METHOD_NOT_ALLOWED",
                f"{request.path} allows GET, HEAD",
                (("allow", "GET, HEAD"),),
            )
        content_type = dict(headers)["content-type"]
        return Response(status, body, content_type, tuple(headers))

    async def _get_ws(self, request: Request) -> Response:
        return error_response(
            426,
            "UPGRADE_REQUIRED",
            "/ws is the WebSocket endpoint: send Upgrade: websocket",
            (("upgrade", "websocket"),),
        )

    async def _get_health(self, request: Request) -> Response:
        gateway = self.gateway
        body: dict[str, object] = {
            "status": "ok",
            "connections": len(gateway.connections),
            "uptime_seconds": round(gateway.wall_clock() - self._started, 3),
        }
        if self._shutting_down:
            return json_response(503, {**body, "status": "shutting_down"})
        problem = await self._probe()
        if problem is not None:
            return json_response(503, {**body, "status": "unavailable", "database": problem})
        return json_response(200, {**body, "database": "writable"})

    async def _probe(self) -> str | None:
        """Whether the database takes writes, probed off the event loop at most once
        per ``HEALTH_CACHE_SECONDS`` however many checkers ask."""
        async with self._health_lock:
            now = trio.current_time()
            if self._health is not None and now - self._health[0] < HEALTH_CACHE_SECONDS:
                return self._health[1]
            probe = functools.partial(
                storage.probe_writable, self.gateway.config.database, self.probe_timeout
            )
            problem: str | None = "the write probe did not finish in time"
            with trio.move_on_after(self.probe_timeout + 1.0):
                problem = await trio.to_thread.run_sync(probe, abandon_on_cancel=True)
            self._health = (trio.current_time(), problem)
            return problem

    async def _get_metrics(self, request: Request) -> Response:
        return Response(200, metrics.render(self.registry), metrics.CONTENT_TYPE)

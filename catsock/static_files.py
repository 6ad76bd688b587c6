"""The dashboard's static files, served by the HTTP front door from ``catsock/static/``.

``static_response(path)`` maps a request target to ``(status, headers, body)``:
``/`` (and ``/index.html``) is ``static/index.html``, ``/favicon.ico`` is
``static/favicon.svg``, ``/static/<name>`` is
``static/<name>``. Anything else, a name outside the directory, or a missing
file gives ``None`` and the caller answers as for any unknown path (404). The
method is the caller's business (GET and HEAD make sense).

Every answer carries a strict Content-Security-Policy: scripts, styles and
images only from this origin (no inline code at all), WebSockets to any host
(a dashboard behind a TLS proxy connects with ``wss:``), no framing. The files
are read once, all together on first use, and kept in memory: they are small and
never change while the process runs, so no request blocks the event loop on the
disk, and a request for a name that is not there costs no memory (the cache holds
the directory's files, never what clients asked for).
"""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = ["CONTENT_SECURITY_POLICY", "CONTENT_TYPES", "cached_files", "static_response"]

Headers = list[tuple[str, str]]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)

CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}

#: A plain file name: no directories, no leading dot, a known extension.
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$")


def static_response(path: str) -> tuple[int, Headers, bytes] | None:
    """The answer for request target ``path``, or None if it names no static file."""
    target = path.split("?", 1)[0].split("#", 1)[0]
    if target in ("/", "/index.html"):
        name = "index.html"
    elif target == "/favicon.ico":  # asked for by browsers and tools whatever the page says
        name = "favicon.svg"
    elif target.startswith("/static/"):
        name = target[len("/static/") :]
    else:
        return None
    found = _load(name)
    if found is None:
        return None
    content_type, body = found
    headers: Headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-cache"),
    ]
    return 200, headers, body


def _load(name: str) -> tuple[str, bytes] | None:
    if not _NAME.match(name) or ".." in name:
        return None
    return _files().get(name)


def cached_files() -> int:
    """How many files are held in memory (the servable files, whatever was asked)."""
    return len(_files())


@functools.cache
def _files() -> dict[str, tuple[str, bytes]]:
    """Every servable file of ``static/``: a plain name with a known extension."""
    files: dict[str, tuple[str, bytes]] = {}
    for resource in resources.files("catsock").joinpath("static").iterdir():
        name = resource.name
        dot = name.rfind(".")
        content_type = CONTENT_TYPES.get(name[dot:].lower()) if dot > 0 else None
        if content_type is not None and _NAME.match(name) and resource.is_file():
            files[name] = content_type, resource.read_bytes()
    return files

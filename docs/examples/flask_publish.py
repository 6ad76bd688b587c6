"""A Flask view that records a conversion and publishes it to catsock (the sync client).

The view's work is a plain function, ``record_conversion``, so it runs (and is
tested) without Flask; ``create_app`` wires it to a route when Flask is installed.
``publish`` only writes the event to the outbox file and returns: the request
never waits for the gateway, and an event the gateway cannot take yet is sent
later by the client's background thread (or by the next process on that outbox).
"""

from __future__ import annotations

import os
from typing import Any

from catsock.client.sync import Client


def make_client(url: str, token: str, outbox_path: str) -> Client:
    # One client per process: created at import time it is still safe under a
    # forking server (gunicorn, uWSGI), since it connects on first use and a
    # forked worker opens its own connection and outbox handle.
    return Client(url, token, "CATS", outbox_path=outbox_path, receive=False)


def record_conversion(client: Client, form: dict[str, Any]) -> dict[str, Any]:
    """Save the conversion (your ORM goes here), then tell the AFAD side about it."""
    payload = {
        "pay_id": int(form["pay_id"]),
        "access_id": int(form["access_id"]),
        "adware_id": int(form["adware_id"]),
        "owner_id": int(form["owner_id"]),
        "cost": int(form["cost"]),
        "sales": int(form["sales"]),
        "state": "PENDING",
    }
    # A stable message_id (one per conversion) makes a retried request a duplicate
    # at the gateway instead of a second event.
    message_id = client.publish("conversion", payload, message_id=f"conversion-{payload['pay_id']}")
    return {"status": "recorded", "message_id": message_id}


def create_app() -> Any:
    from flask import Flask, request

    app = Flask(__name__)
    client = make_client(
        os.environ.get("CATSOCK_URL", "ws://127.0.0.1:8765/ws"),
        os.environ["CATSOCK_TOKEN"],
        os.environ.get("CATSOCK_OUTBOX", "cats-outbox.db"),
    )

    @app.post("/conversions")
    def conversions() -> dict[str, Any]:
        return record_conversion(client, request.get_json())

    return app

"""A FastAPI app that keeps its ad cache fresh from ``adware_update`` events (asyncio client).

``consume`` is the client part: it runs for the app's lifetime (FastAPI's
``lifespan``), applies each ``adware_update`` to ``ads`` in a handler, and acks
it once applied, so a restarted app resumes after the last update it applied.
It runs (and is tested) without FastAPI; ``create_app`` wires it up when
FastAPI is installed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from catsock.client.aio import Client, ReceivedEvent, connect


def apply_update(ads: dict[int, dict[str, Any]], event: ReceivedEvent) -> None:
    ad_id = int(event.payload["adware_id"])
    if event.payload["action"] == "DELETE":
        ads.pop(ad_id, None)
    else:  # CREATE, or UPDATE with only what changed
        ads.setdefault(ad_id, {}).update(event.payload.get("data") or {})


@asynccontextmanager
async def consume(url: str, token: str, ads: dict[int, dict[str, Any]]) -> AsyncIterator[Client]:
    async with connect(url, token, "CATS") as client:
        client.add_handler("adware_update", lambda event: apply_update(ads, event))
        yield client


def create_app() -> Any:
    from fastapi import FastAPI, HTTPException

    ads: dict[int, dict[str, Any]] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = os.environ.get("CATSOCK_URL", "ws://127.0.0.1:8765/ws")
        async with consume(url, os.environ["CATSOCK_TOKEN"], ads):
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/ads/{ad_id}")
    async def get_ad(ad_id: int) -> dict[str, Any]:
        if ad_id not in ads:
            raise HTTPException(404)
        return ads[ad_id]

    return app

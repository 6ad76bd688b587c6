"""A publishing process for the kill -9 test: ``python -m tests.client.publisher RUNTIME
URL TOKEN OUTBOX N`` stores N conversions in OUTBOX with RUNTIME's client, prints
``stored`` once each publish call has returned, and then waits to be killed."""

from __future__ import annotations

import asyncio
import sys
import time

import trio

from catsock.client import aio, sync
from catsock.client import connect as trio_connect


def conversion(n: int) -> dict[str, int | str]:
    return {"pay_id": n, "adware_id": 100, "owner_id": 500, "cost": 1, "sales": 2,
            "state": "PENDING"}  # fmt: skip


def stored() -> None:
    print("stored", flush=True)


def main(runtime: str, url: str, token: str, outbox: str, count: int) -> None:
    ids = [f"killed-{n}" for n in range(count)]
    options = {"outbox_path": outbox, "receive": False, "wait_connected": False}
    if runtime == "trio":

        async def trio_main() -> None:
            async with trio_connect(url, token, "CATS", **options) as client:
                for n, message_id in enumerate(ids):
                    await client.enqueue("conversion", conversion(n), message_id=message_id)
                stored()
                await trio.sleep_forever()

        trio.run(trio_main)
    elif runtime == "asyncio":

        async def aio_main() -> None:
            async with aio.connect(url, token, "CATS", **options) as client:
                for n, message_id in enumerate(ids):
                    await client.enqueue("conversion", conversion(n), message_id=message_id)
                stored()
                await asyncio.Event().wait()

        asyncio.run(aio_main())
    else:
        client = sync.Client(url, token, "CATS", outbox_path=outbox, receive=False)
        for n, message_id in enumerate(ids):
            client.publish("conversion", conversion(n), message_id=message_id)
        stored()
        while True:
            time.sleep(60)


if __name__ == "__main__":
    runtime, url, token, outbox, count = sys.argv[1:]
    main(runtime, url, token, outbox, int(count))

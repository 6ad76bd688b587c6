"""A publisher process for test_kill.py: ``python publisher.py URL TOKEN OUTBOX COUNT``.

Publishes conversions with message_ids ``pub-00000`` .. ``pub-{COUNT-1}`` through
``catsock.client`` with a durable outbox, skipping the ids the outbox already
holds: started again on the same outbox after a SIGKILL, the client resends what
the dead process left PENDING, and this adds only what it never stored. Prints
``accepted MESSAGE_ID SEQ [duplicate]`` for each answer (flushed at once), then
``done`` once every publish, the resent ones included, is answered.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys

import trio

from catsock.backoff import Backoff
from catsock.client import Accepted, Publication, connect
from tests.catsock.harness import CONVERSION


def stored_ids(outbox: str) -> set[str]:
    if not os.path.exists(outbox):
        return set()
    with contextlib.closing(sqlite3.connect(outbox)) as db:
        return {row[0] for row in db.execute("SELECT message_id FROM socket_events")}


def report(accepted: Accepted) -> None:
    duplicate = " duplicate" if accepted.duplicate else ""
    print(f"accepted {accepted.message_id} {accepted.seq}{duplicate}", flush=True)


async def main(url: str, token: str, outbox: str, count: int) -> None:
    already = stored_ids(outbox)
    backoff = Backoff(base=0.05, factor=2.0, cap=0.5, jitter=0.2)
    async with connect(
        url, token, "CATS", outbox_path=outbox, receive=False, backoff=backoff
    ) as client:
        send, receive = trio.open_memory_channel[Publication](count)
        async with trio.open_nursery() as nursery:

            async def answers() -> None:
                async for publication in receive:
                    report(await publication.result())

            nursery.start_soon(answers)
            async with send:
                for i in range(count):
                    message_id = f"pub-{i:05d}"
                    if message_id not in already:
                        payload = {**CONVERSION, "pay_id": i}
                        publication = await client.enqueue(
                            "conversion", payload, message_id=message_id
                        )
                        await send.send(publication)
        await client.flush()  # the resends of what an earlier process left, too
    print("done", flush=True)


if __name__ == "__main__":
    url, token, outbox, count = sys.argv[1:5]
    trio.run(main, url, token, outbox, int(count))

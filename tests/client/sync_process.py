"""Processes for the synchronous client's fork and exit tests.

``python -m tests.client.sync_process fork URL TOKEN OUTBOX``: a client connects and
publishes, the process forks, the child publishes through the same ``Client``
object, then the parent publishes again; prints one JSON line with what each saw.

``python -m tests.client.sync_process exit URL TOKEN OUTBOX N``: publishes N events
with ``publish`` (no waiting) and leaves without ``close``: the exit hook must
deliver them.
"""

from __future__ import annotations

import json
import os
import sys

from catsock.client.sync import Client

PAYLOAD = {"pay_id": 1, "adware_id": 100, "owner_id": 500, "cost": 1, "sales": 2,
           "state": "PENDING"}  # fmt: skip


def fork(url: str, token: str, outbox: str) -> None:
    client = Client(url, token, "CATS", outbox_path=outbox, receive=False)
    before = client.publish_and_wait("conversion", PAYLOAD, message_id="parent-1", timeout=20)
    parent_connection = client.connection_id
    parent_outbox = client._outbox
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        try:
            accepted = client.publish_and_wait(
                "conversion", PAYLOAD, message_id="child-1", timeout=20
            )
            report = {
                "seq": accepted.seq,
                "connection_changed": client.connection_id != parent_connection,
                "outbox_reopened": client._outbox is not parent_outbox,
                "connections": client.connections,
            }
            client.close()
        except BaseException as exc:
            report = {"error": repr(exc)}
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = json.loads(pipe.read())
    _, status = os.waitpid(pid, 0)
    after = client.publish_and_wait("conversion", PAYLOAD, message_id="parent-2", timeout=20)
    parent = {
        "seqs": [before.seq, after.seq],
        "same_connection": client.connection_id == parent_connection,
        "connections": client.connections,
        "child_status": status,
    }
    client.close()
    print(json.dumps({"child": child, "parent": parent}), flush=True)


def leave(url: str, token: str, outbox: str, count: int) -> None:
    client = Client(url, token, "CATS", outbox_path=outbox, receive=False)
    for n in range(count):
        client.publish("conversion", {**PAYLOAD, "pay_id": n}, message_id=f"exit-{n}")
    print("published", flush=True)
    # No close(): the interpreter's exit hook flushes and closes.


if __name__ == "__main__":
    command, url, token, outbox, *rest = sys.argv[1:]
    if command == "fork":
        fork(url, token, outbox)
    else:
        leave(url, token, outbox, int(rest[0]))

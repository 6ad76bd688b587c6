"""``python -m catsock serve --workers 2`` in cluster mode, end to end: two real worker
processes on one port over a real redis-server; events published over fresh HTTP
connections (spread over both workers by the kernel) all reach one durable AFAD,
numbered without a gap; a worker killed with -9 is started again; SIGTERM stops both;
and workers do not outlive a supervisor killed with -9.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import trio
import trio_websocket

from tests.catsock.harness import CONVERSION, Client, envelope
from tests.catsock.test_http import bearer, http
from tests.catsock.test_serve import TIMEOUT, cli_env, create_token, serving
from tests.catsock.test_workers import RESTARTED, alive, free_port, listening, worker_pids
from tests.cluster.redisserver import RedisServer


async def test_two_workers_in_cluster_mode_share_the_log_and_stop_together(
    tmp_path: Path, redis: RedisServer
) -> None:
    port = free_port()
    env = cli_env(tmp_path / "catsock.db", CATSOCK_CLUSTER__REDIS=redis.url)
    with trio.fail_after(TIMEOUT * 3):
        cats = await create_token(tmp_path, env, "CATS", "cats")
        afad = await create_token(tmp_path, env, "AFAD", "afad")
        async with serving(tmp_path, env, "--workers", "2", "--port", str(port)) as served:
            await served.err.wait_for(listening(2))
            pids = worker_pids(served.process.pid)
            assert len(pids) == 2
            url = f"ws://127.0.0.1:{port}/ws"
            async with trio_websocket.open_websocket_url(url) as ws:
                recipient = Client(ws)
                # acks: events carry their seq (docs/delivery.md §1)
                await recipient.send(
                    {
                        "type": "auth",
                        "token": afad,
                        "client_type": "AFAD",
                        "extensions": {"acks": {}},
                    }
                )
                assert (await recipient.recv())["type"] == "auth_success"
                for i in range(20):
                    body = envelope("conversion", CONVERSION, "CATS", f"w-{i}").encode()
                    reply = await http(
                        port, "POST", "/api/publish", headers=bearer(cats), body=body
                    )
                    assert reply.status == 202, reply
                got = [json.loads(await recipient.recv_text()) for _ in range(20)]
            assert sorted(m["message_id"] for m in got) == sorted(f"w-{i}" for i in range(20))
            seqs = [m["seq"] for m in got]
            assert seqs == list(range(seqs[0], seqs[0] + 20))  # one numbering, no gap
            victim = min(pids)
            os.kill(victim, signal.SIGKILL)
            _, restarted = await served.wait_for_line(RESTARTED)
            assert int(restarted[2]) == victim
            await served.err.wait_for(listening(3))
            assert (await http(port, "GET", "/health")).status == 200
            assert await served.stop(signal.SIGTERM) == 0


async def test_workers_do_not_outlive_a_supervisor_killed_with_9(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Nothing would stop them any more: each sees its supervisor gone and shuts down
    gracefully (their stderr, shared with it, then ends)."""
    port = free_port()
    env = cli_env(tmp_path / "catsock.db", CATSOCK_CLUSTER__REDIS=redis.url)
    with trio.fail_after(TIMEOUT * 2):
        async with serving(tmp_path, env, "--workers", "2", "--port", str(port)) as served:
            await served.err.wait_for(listening(2))
            pids = worker_pids(served.process.pid)
            served.process.kill()
            await served.err.wait_eof()  # every worker has closed its stderr: exited
    gone = [line for line in served.lines if line == "catsock: the supervisor is gone"]
    assert len(gone) == 2
    assert served.stderr.count("catsock: shutting down") == 2
    assert not [pid for pid in pids if alive(pid)]

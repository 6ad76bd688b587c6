"""docs/client.md against the code: its examples are the files in docs/examples/, and
their client parts work against a live gateway; the runtimes take the same options."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from catsock.client import Client as TrioClient
from catsock.client import aio, sync
from storage.outbox import Outbox, OutboxStatus

from .drivers import open_client
from .gateway import TIMEOUT, GatewayThread

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "client.md").read_text(encoding="utf-8")


def load(name: str) -> ModuleType:
    path = ROOT / "docs" / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_doc_quotes_each_example_file_verbatim() -> None:
    quoted = re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```", DOC, flags=re.DOTALL)
    assert sorted(path for path, _ in quoted) == [
        "docs/examples/fastapi_consume.py",
        "docs/examples/flask_publish.py",
    ]
    for path, code in quoted:
        assert code == (ROOT / path).read_text(encoding="utf-8"), path


def test_the_runtimes_take_the_same_options() -> None:
    def options(cls: type) -> dict[str, Any]:
        return {
            name: p.default
            for name, p in inspect.signature(cls).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    trio_options = options(TrioClient)
    assert options(aio.Client) == trio_options
    sync_options = options(sync.Client)
    assert sync_options.pop("flush_timeout") == sync.FLUSH_TIMEOUT
    # The rest goes to the asyncio client as **options.
    assert set(sync_options) <= set(trio_options)
    assert all(trio_options[name] == default for name, default in sync_options.items())


def test_the_flask_example_publishes_a_conversion_once(
    gateway: GatewayThread, tmp_path: Path
) -> None:
    example = load("flask_publish")
    afad = open_client("sync", gateway.url, gateway.token("afad", "AFAD"), "AFAD")
    afad.record()
    client = example.make_client(gateway.url, gateway.token("cats", "CATS"), tmp_path / "o.db")
    form = {"pay_id": "7", "access_id": "8", "adware_id": "100", "owner_id": "500",
            "cost": "1000", "sales": "5000"}  # fmt: skip
    try:
        first = example.record_conversion(client, form)
        again = example.record_conversion(client, form)  # a retried request
        client.flush(TIMEOUT)
        handled = afad.wait_handled(1)
    finally:
        client.close()
        afad.close()
    assert first == again == {"status": "recorded", "message_id": "conversion-7"}
    assert [(e.type, e.message_id, e.payload["pay_id"]) for e in handled] == [
        ("conversion", "conversion-7", 7)
    ]
    with Outbox(tmp_path / "o.db") as outbox:
        (row,) = outbox.entries()
    assert (row.status, row.seq) == (OutboxStatus.SENT, handled[0].seq)


def test_the_fastapi_example_keeps_its_cache_in_step(gateway: GatewayThread) -> None:
    example = load("fastapi_consume")
    cats, afad = gateway.token("cats", "CATS"), gateway.token("afad", "AFAD")
    ads: dict[int, dict[str, Any]] = {200: {"name": "old"}}
    updates = [
        {"adware_id": 100, "action": "CREATE", "data": {"name": "A", "money": 1000}},
        {"adware_id": 100, "action": "UPDATE", "data": {"money": 900}},
        {"adware_id": 200, "action": "DELETE"},
    ]

    async def scenario() -> None:
        async with asyncio.timeout(TIMEOUT):
            async with example.consume(gateway.url, cats, ads) as consumer:
                # Registered after the example's handler, so it runs after it.
                seen: list[str] = []
                done = asyncio.Event()

                def count(event: aio.ReceivedEvent) -> None:
                    seen.append(event.message_id)
                    if len(seen) == len(updates):
                        done.set()

                consumer.add_handler("adware_update", count)
                async with aio.connect(gateway.url, afad, "AFAD", receive=False) as publisher:
                    for payload in updates:
                        await publisher.publish("adware_update", payload)
                await done.wait()

    asyncio.run(scenario())
    assert ads == {100: {"name": "A", "money": 900}}

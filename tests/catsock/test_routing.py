"""Routing and delivery over real sockets: who receives what, exactly as sent."""

from __future__ import annotations

import trio

from .harness import ADWARE_UPDATE, CONVERSION, Client, GatewayFactory, envelope


async def _nothing_pending(client: Client) -> None:
    """Prove ``client`` got nothing so far: a ping answered now must come first."""
    await client.send({"type": "ping"})
    assert (await client.recv())["type"] == "pong"


async def test_conversion_reaches_afad_admin_dashboard_and_owner_verbatim(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    # Extra fields, a float spelled 10.0 and non-ASCII text must arrive unchanged.
    payload = {**CONVERSION, "extra": {"nested": [1, 2.5]}, "ratio": 10.0}
    text = envelope("conversion", payload, "CATS", "m-1")
    with trio.fail_after(10):
        async with (
            gw.client("CATS", "cats") as cats,
            gw.client("CATS", "cats-2") as other_cats,
            gw.client("AFAD") as afad,
            gw.client("DASHBOARD", "admin") as admin,
            gw.client("DASHBOARD", "aff-500", user_id="500") as owner,
            gw.client("DASHBOARD", "aff-499", user_id="499") as parent,
            gw.client("DASHBOARD", "aff-7", user_id="7") as stranger,
        ):
            await cats.send(text)
            for recipient in (afad, admin, owner, parent):
                assert await recipient.recv_text() == text
            # Never echoed; not routed to CATS; not to an unrelated affiliate.
            for bystander in (cats, other_cats, stranger):
                await _nothing_pending(bystander)


async def test_adware_update_goes_to_cats_only(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    text = envelope("adware_update", ADWARE_UPDATE, "AFAD", "m-2")
    with trio.fail_after(10):
        async with (
            gw.client("CATS") as cats,
            gw.client("AFAD") as afad,
            gw.client("DASHBOARD", "admin") as admin,
        ):
            await afad.send(text)
            assert await cats.recv_text() == text
            await _nothing_pending(admin)
            await _nothing_pending(afad)


async def test_spoofed_sender_is_refused(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        async with gw.client("AFAD") as afad, gw.client("CATS") as cats:
            # AFAD claims to be CATS to push a conversion (seed 004's spoofing fault).
            await afad.send(envelope("conversion", CONVERSION, "CATS", "spoof-1"))
            error = await afad.recv()
            assert error["payload"]["error_code"] == "SENDER_MISMATCH"
            assert error["payload"]["message_id"] == "spoof-1"
            # Honest sender, but AFAD may not publish conversions at all.
            await afad.send(envelope("conversion", CONVERSION, "AFAD", "spoof-2"))
            assert (await afad.recv())["payload"]["error_code"] == "EVENT_NOT_ALLOWED"
            await _nothing_pending(cats)


async def test_invalid_event_is_refused_and_connection_survives(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        async with gw.client("CATS") as cats, gw.client("AFAD") as afad:
            await cats.send(envelope("conversion", {**CONVERSION, "cost": "1000"}, "CATS", "bad"))
            error = await cats.recv()
            assert error["payload"]["error_code"] == "INVALID_MESSAGE"
            assert "$.payload.cost" in error["payload"]["error_message"]
            await cats.send("{not json")
            assert (await cats.recv())["payload"]["error_code"] == "INVALID_MESSAGE"
            await cats.send(envelope("no_such_event", {}, "CATS", "x"))
            assert (await cats.recv())["payload"]["error_code"] == "UNKNOWN_TYPE"
            good = envelope("conversion", CONVERSION, "CATS", "good")
            await cats.send(good)
            assert await afad.recv_text() == good


async def test_operator_declared_event_type_routes_per_config(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(
        routes={"payout_ready": {"senders": ["AFAD"], "to": ["CATS"], "user_fields": ["owner_id"]}}
    )
    text = envelope("payout_ready", {"owner_id": 42, "anything": ["goes"]}, "AFAD", "p-1")
    with trio.fail_after(10):
        async with (
            gw.client("AFAD") as afad,
            gw.client("CATS") as cats,
            gw.client("DASHBOARD", "aff-42", user_id="42") as owner,
        ):
            await afad.send(text)
            assert await cats.recv_text() == text
            assert await owner.recv_text() == text


async def test_many_publishes_arrive_complete_and_in_order(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(limits={"rate_limits_enabled": False})
    texts = [envelope("click", {"access_id": i, "adware_id": 1, "owner_id": 2}, "CATS", f"c{i}")
             for i in range(2000)]
    with trio.fail_after(30):
        async with gw.client("CATS") as cats, gw.client("AFAD") as afad:
            async def publish() -> None:
                for text in texts:
                    await cats.send(text)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish)
                received = [await afad.recv_text() for _ in texts]
    assert received == texts

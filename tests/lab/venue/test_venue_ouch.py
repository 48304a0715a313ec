"""The venue's gateway speaking OUCH 4.2 in SoupBinTCP: a login answered, orders matched and answered
as Sequenced Data, a bad OUCH message rejected with the session kept, bad Soup framing closing it."""
import struct

import numpy as np
import pytest
from test_venue_gateway import ASK, INSTRUMENT, connect, is_closed_by_peer, make_gateway, pump, recv_exact  # noqa: F401
from test_venue_gateway import rx_stamping  # noqa: F401  (a fixture make_gateway needs)

from engine.messages import BUY, DAY, IOC
from engine.protocol import ouch42
from engine.protocol.layout import gather

CLIENT = ouch42.Ouch42Client(1, "WLAB01")


def soup_packet(client):
    """One SoupBinTCP packet from the venue: (type, payload)."""
    length = struct.unpack(">H", recv_exact(client, 2))[0]
    body = recv_exact(client, length)
    return body[:1], body[1:]


def outbound(payload):
    layout = ouch42.OUTBOUND[payload[0]]
    return gather(payload, [0], layout.dtype)[0]


def test_login_then_an_order_is_accepted_and_executed_as_sequenced_data(make_gateway):
    gateway = make_gateway(protocol="ouch42")
    with connect(gateway) as client:
        client.sendall(CLIENT.login())
        pump(gateway, lambda: gateway.stats()["session_messages"] == 1)
        kind, payload = soup_packet(client)
        assert kind == b"A" and payload[:10] == b"WIRELAB001"           # Login Accepted: session, sequence
        order = CLIENT.order(31, 0, INSTRUMENT, BUY, IOC, ASK, 3)
        client.sendall(order[:ouch42.PREFIX_BYTES])                     # the primed prefix, then the rest
        client.sendall(order[ouch42.PREFIX_BYTES:])
        pump(gateway, lambda: gateway.stats()["messages"] == 1)
        accepted, executed = (outbound(soup_packet(client)[1]) for _ in range(2))
        assert bytes(accepted["order_token"]) == b"%014d" % 31 and accepted["shares"] == 3
        assert int(accepted["price"]) * ouch42.PRICE_SCALE == ASK
        assert executed["executed_shares"] == 3 and int(executed["execution_price"]) * ouch42.PRICE_SCALE == ASK
        events = CLIENT.replies(ouch42.soup(b"S", accepted.tobytes()) + ouch42.soup(b"S", executed.tobytes()))
        assert [e[0] for e in events.events] == ["A", "F"] and events.events[1][-1] == 0   # nothing left
    record = gateway.records()[0]
    assert (record["kind"], record["client_order_id"], record["message_bytes"]) == (b"new", 31, 52)
    assert record["segments"] >= 1 and record["stream_offset"] == len(CLIENT.login())


def test_a_resting_order_is_cancelled_by_its_token(make_gateway):
    gateway = make_gateway(protocol="ouch42")
    client_side = ouch42.Ouch42Client(1, "WLAB01")
    with connect(gateway) as client:
        client.sendall(client_side.login() + client_side.order(5, 0, INSTRUMENT, BUY, DAY, ASK - 10**8, 2))
        pump(gateway, lambda: gateway.stats()["messages"] == 1)
        soup_packet(client)
        assert outbound(soup_packet(client)[1])["order_state"] == b"L"
        client.sendall(client_side.cancel(6, 0, 5, INSTRUMENT, BUY, 2))
        pump(gateway, lambda: gateway.stats()["messages"] == 2)
        canceled = soup_packet(client)[1]
        assert canceled[:1] == b"C" and outbound(canceled)["order_token"] == b"%014d" % 5
        assert client_side.replies(ouch42.soup(b"S", canceled)).events == [("X", 6, 0, 0, 0, 0, 0)]


@pytest.mark.parametrize("bad", [
    ouch42.soup(b"U", b"O" + b"%014d" % 9 + b"B" + bytes(5)),          # an Enter Order cut mid-field
    ouch42.soup(b"U", b"K" + bytes(20)),                                # an unknown OUCH type
])
def test_bad_ouch_in_good_soup_is_rejected_and_the_session_goes_on(make_gateway, bad):
    gateway = make_gateway(protocol="ouch42")
    with connect(gateway) as client:
        client.sendall(CLIENT.login() + bad + CLIENT.order(8, 0, INSTRUMENT, BUY, IOC, ASK, 1))
        pump(gateway, lambda: gateway.stats()["messages"] == 1)
        assert gateway.stats()["malformed"] == 1 and gateway.stats()["disconnects"] == 0
        packets = [soup_packet(client) for _ in range(3 if bad[3:4] == b"O" else 2)]
        kinds = [payload[:1] for _kind, payload in packets[1:]]
        assert kinds == ([b"J", b"A"] if bad[3:4] == b"O" else [b"A"])       # the cut order is rejected


@pytest.mark.parametrize("bad", [struct.pack(">H", 0) + b"U", struct.pack(">H", 0xFFFF) + b"U",
                                 ouch42.soup(b"Q", b"?")])
def test_bad_soup_framing_closes_the_connection_and_is_counted(make_gateway, bad):
    gateway = make_gateway(protocol="ouch42")
    with connect(gateway) as client:
        client.sendall(bad)
        pump(gateway, lambda: gateway.stats()["malformed"] == 1)
        assert is_closed_by_peer(client)
    assert len(gateway.records()) == 0 and np.all(gateway.records()["kind"] != b"new")

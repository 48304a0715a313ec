"""The registry is the only place that knows protocols by name: nothing outside engine/protocol/
holds a protocol's name as a string to compare, and the order of the built-ins is fixed."""
import ast
from pathlib import Path

import pytest

from engine.protocol import ProtocolError, md_protocol, order_protocol, protocols
from engine.protocol.registry import sniff_orders

ROOT = Path(__file__).parents[3]


def test_no_protocol_name_is_written_as_a_string_outside_engine_protocol():
    names = {p.name for p in protocols()}
    found = []
    for folder in ("engine", "lab", "simulator", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(ROOT / "engine" / "protocol"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in names:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


def test_the_built_ins_come_first_in_a_fixed_order_and_unknown_names_are_one_clear_error():
    assert [p.name for p in protocols()][:5] == ["wm", "itch50", "binary", "fix", "ouch42"]
    with pytest.raises(ProtocolError, match="unknown order protocol 'ouch'.*binary, fix, ouch42"):
        order_protocol("ouch")
    with pytest.raises(ProtocolError, match="unknown market-data protocol"):
        md_protocol("binary")


def test_sniffing_tells_the_order_protocols_apart_by_their_first_bytes():
    from engine.protocol import fix, orders
    new_order = orders.NewOrder(1, 2, 3, 4, orders.BUY, 100, 5).encode()
    assert sniff_orders(new_order[:5]).name == "binary"
    assert sniff_orders(b"8=FIX.4.2\x019=").name == "fix"
    assert sniff_orders(b"\xff\xff\xff\xff\xff") is order_protocol("binary")      # the default
    assert fix.FixOrders().sniff(b"8=FIX") and not orders.BinaryOrders().sniff(b"8=FIX")


def test_the_md_protocol_finds_each_datagrams_seq_and_send_time_in_a_batch():
    """WM: one message per datagram. Payloads that are not WM, or are cut short, have none."""
    from engine.protocol import md
    grams = [md.MdDatagram(1, 100 + k, 7, 10**18 + k, (md.L2Update(md.BID, md.SET, 10, 1),
                                                       md.L2Update(md.ASK, md.SET, 11, 1))).encode() for k in range(3)]
    payloads = [grams[0], b"not market data at all, but long enough to hold a header", grams[1][:-1], grams[2]]
    data = b"".join(payloads)
    lengths = [len(p) for p in payloads]
    offsets = [sum(lengths[:k]) for k in range(len(payloads))]
    found = md_protocol("wm").messages(data, offsets, lengths)
    assert found.datagram.tolist() == [0, 3] and found.seq.tolist() == [100, 102]
    assert found.timestamp_ns.tolist() == [10**18, 10**18 + 2]
    assert found.problems == {"not_wm": 2} and md_protocol("wm").decode(grams[1]).seq == 101

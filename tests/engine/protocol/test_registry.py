"""The registry is the only place that knows protocols by name: nothing outside engine/protocol/
holds a protocol's name as a string to compare, and the order of the built-ins is fixed."""
import ast
from pathlib import Path

import pytest

from engine.protocol import ProtocolError, md_protocol, order_protocol, protocols
from engine.protocol.registry import sniff_orders

ROOT = Path(__file__).parents[3]


def _names_in(node, names) -> list[str]:
    """Protocol names a comparison operand holds: a string, or strings in a tuple, list or set."""
    values = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [v.value for v in values if isinstance(v, ast.Constant) and v.value in names]


def test_no_protocol_name_is_compared_outside_engine_protocol():
    """`x == "fix"` or `x in ("binary", "fix")` anywhere but engine/protocol/ would be a protocol known
    by name in a second place; naming one to use it (a default, a demo's choice) is not a test."""
    names = {p.name for p in protocols()}
    found = []
    for folder in ("engine", "lab", "simulator", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(ROOT / "engine" / "protocol"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Compare):
                    for operand in (node.left, *node.comparators):
                        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name!r}" for name in _names_in(operand, names)]
                elif isinstance(node, ast.MatchValue):
                    found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name!r}" for name in _names_in(node.value, names)]
    assert not found, "\n".join(found)


def test_the_compare_finder_sees_a_comparison():
    tree = ast.parse('if kind in ("fix", "other"): pass\nx = kind == "binary"\ny = {"fix": 1}')
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    assert [name for c in compares for o in (c.left, *c.comparators) for name in _names_in(o, {"fix", "binary"})] == \
        ["fix", "binary"]


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


def test_the_md_protocol_finds_each_datagrams_seq_in_a_batch():
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
    assert found.problems == {"not_wm": 2} and md_protocol("wm").decode(grams[1]).seq == 101

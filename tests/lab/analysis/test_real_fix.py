"""`lab measure` on FIX as a real FIX engine writes it (simplefix builds the messages): FIX 4.2 and
4.4, variable-length values, any tag order in the body, repeating groups, messages split across
segments; BodyLength frames them and a wrong CheckSum is counted, never taken for an order."""
import random

import simplefix
from wirecap import md_frame, order_frame, syn_frame, write_pcapng

from lab.analysis.measure import MeasureOptions, measure


def new_order_single(version: str, seq_num: int, trigger: int, rng: random.Random) -> bytes:
    """A NewOrderSingle with the header in place, the body's tags shuffled, and a parties group."""
    message = simplefix.FixMessage()
    message.append_pair(8, f"FIX.{version}", header=True)
    message.append_pair(35, "D", header=True)
    message.append_pair(49, "CLIENT" + "X" * rng.randrange(4), header=True)
    message.append_pair(56, "VENUE", header=True)
    message.append_pair(34, seq_num, header=True)
    message.append_utc_timestamp(52, precision=6, header=True)
    body = [(11, f"ord-{seq_num}"), (55, rng.choice(["AAPL", "MSFT", "ES Z6"])), (54, rng.choice("12")),
            (38, rng.randrange(1, 5000)), (40, 2), (44, f"{rng.uniform(10, 500):.{rng.randrange(1, 5)}f}"),
            (59, 3), (9001, trigger), (60, "20261208-01:02:03.456")]
    rng.shuffle(body)
    for tag, value in body:
        message.append_pair(tag, value)
    message.append_pair(453, 2)                                # NoPartyIDs, then 2 x (448, 447, 452)
    for party, role in (("FIRM1", 1), ("TRADER7", 11)):
        message.append_pair(448, party)
        message.append_pair(447, "D")
        message.append_pair(452, role)
    return message.encode()


def test_real_fix_orders_match_their_triggers_and_bad_checksums_are_counted(tmp_path):
    rng = random.Random(7)
    packets, stream, expected = [(1_000, syn_frame(), 2)], b"", {}
    t = 10_000
    for k in range(60):
        seq = 500 + k
        packets.append((t, md_frame(seq), 1))
        order = new_order_single(("4.2", "4.4")[k % 2], k + 2, seq, rng)
        if k == 13:                                             # a CheckSum off by one: not an order
            order = order[:-4] + b"%03d" % ((int(order[-4:-1]) + 1) % 256) + b"\x01"
        else:
            expected[seq] = 7_000 + 13 * k
        cut = rng.randrange(1, len(order)) if k % 3 == 0 else len(order)     # some orders in two segments
        for piece, delay in ((order[:cut], 7_000 + 13 * k), (order[cut:], 9_000 + 13 * k)):
            if piece:
                packets.append((t + delay, order_frame(piece, len(stream)), 2))
                stream += piece
        t += 50_000
    write_pcapng(tmp_path / "fix.pcapng", packets)
    result = measure(tmp_path / "fix.pcapng", MeasureOptions())
    assert result.protocols == {"md": "wm", "orders": ["fix"]}
    assert result.tcp["order_problems"] == {"bad_checksums": 1} and result.tcp["framing_errors"] == []
    rows = result.per_trigger
    assert dict(zip(rows["md_seq"].tolist(), rows["tick_to_trade_ns"].tolist())) == expected
    assert result.counts["orders"] == 59 and result.counts["unmatched_orders"] == 0

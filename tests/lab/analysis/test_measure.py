"""The measurement pipeline on hand-built captures whose every time is derived here by hand."""
import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import CookedLinux, Ether
from wirecap import (
    FEED,
    GROUP,
    HOST,
    VENUE,
    batch_of,
    md_frame,
    md_payload,
    new_order,
    order_frame,
    syn_frame,
    write_pcap,
    write_pcapng,
)

from engine.protocol.fix import NEW_ORDER_SINGLE_PREFIX_BYTES, NewOrderSingle
from engine.protocol.orders import NEW_ORDER_PREFIX_BYTES as PREFIX
from lab.analysis import convention
from lab.analysis.match import parse_match
from lab.analysis.decode import decode
from lab.analysis.measure import MeasureError, MeasureOptions, measure, parse_endpoint
from lab.capture import Interface, PcapngWriter
from simulator.framing import ethernet_slot_ns, ethernet_wire_ns

GBPS10 = 10**10


def wire_ns(frame: bytes, rate: int) -> int:
    """Preamble+SFD, frame, FCS, padded to 64: bits / rate, rounded up (from first principles)."""
    wire_bytes = 8 + max(len(frame) + 4, 64)
    return -(-wire_bytes * 8 * 10**9 // rate)


def test_wire_time_figures():
    assert ethernet_wire_ns(60, GBPS10) == 58                     # 72 B at 10 Gb/s = 57.6 ns
    assert ethernet_wire_ns(488, 100 * 10**6) == 40_000           # 500 B at 100 Mb/s = 40 us
    assert ethernet_wire_ns(488, 256_000) == 15_625_000           # 500 B at 256 kb/s
    assert ethernet_wire_ns(np.array([1, 60, 1514]), 10**9).tolist() == [576, 576, 12_208]
    assert ethernet_slot_ns(60, GBPS10) == 68                     # with the 12-byte gap: 67.2 ns


def timeline():
    """A feed and one order connection: (ts as first bit, frame, direction), with hand-known answers."""
    o1, o2, o3 = new_order(100, 1), new_order(102, 2), new_order(555, 3)
    rows = [
        (0, syn_frame(), 2),
        (1_000, md_frame(100), 1),
        (1_500, order_frame(o1[:PREFIX], 0), 2),           # o1: prefix, then the rest
        (1_800, order_frame(o1[PREFIX:], PREFIX), 2),
        (1_900, md_frame(101), 1),
        (2_000, md_frame(102), 1),
        (2_600, order_frame(o2[PREFIX:], 48 + PREFIX), 2),  # o2: its rest goes out before its prefix
        (2_700, order_frame(o2[:PREFIX], 48), 2),
        (2_800, order_frame(o1[PREFIX:], PREFIX), 2),      # a retransmission: changes nothing
        (3_000, order_frame(o3, 96), 2),                   # triggered by an MD not in the capture
        (3_100, order_frame(b"\x30\x00A" + bytes(29), 0, src=VENUE, dst=HOST, sport=9000, dport=40000), 1),
    ]
    frames = {ts: frame for ts, frame, _ in rows}
    return rows, frames


def test_trigger_matching_by_hand(tmp_path):
    rows, frames = timeline()
    path = tmp_path / "hand.pcapng"
    write_pcapng(path, rows)
    m = measure(path, MeasureOptions(line_rate_bps=GBPS10))
    pt = m.per_trigger
    assert pt["md_seq"].tolist() == [100, 102]
    assert pt["t_md_ns"].tolist() == [1_000, 2_000]
    assert pt["order_first_bit_ns"].tolist() == [1_500, 2_600]
    assert pt["tick_to_trade_ns"].tolist() == [500, 600]
    assert pt["order_last_frame_first_bit_ns"].tolist() == [1_800, 2_700]
    assert pt["order_last_byte_ns"].tolist() == [1_800 + wire_ns(frames[1_800], GBPS10),
                                                 max(2_600 + wire_ns(frames[2_600], GBPS10),
                                                     2_700 + wire_ns(frames[2_700], GBPS10))]
    assert pt["md_packet"].tolist() == [2, 6] and pt["order_packet"].tolist() == [4, 8]
    assert m.counts == {"md_messages": 3, "orders": 3, "matched": 2, "unmatched_md": 1, "unmatched_orders": 1,
                        "duplicate_orders": 0, "duplicate_md": 0}
    assert m.misses["unmatched_md"]["seq"].tolist() == [101] and m.misses["unmatched_md"]["packet"].tolist() == [5]
    assert m.misses["unmatched_orders"]["trigger_seq"].tolist() == [555]
    assert m.tcp["duplicate_bytes"] == 48 - PREFIX
    assert m.tcp["flows"] == 1                             # the inbound (venue) flow is not an order flow


def test_software_stamps_are_moved_to_the_first_bit(tmp_path):
    rows, frames = timeline()
    rate = 10**9
    # inbound frames stamped at their last bit; outbound at their first
    software = [(ts + (wire_ns(f, rate) if d == 1 else 0), f, d) for ts, f, d in rows]
    path = tmp_path / "sw.pcapng"
    write_pcapng(path, software)
    m = measure(path, MeasureOptions(convention="software", line_rate_bps=rate))
    assert m.per_trigger["t_md_ns"].tolist() == [1_000, 2_000]
    assert m.per_trigger["tick_to_trade_ns"].tolist() == [500, 600]
    # the same file read as hardware stamps is off by exactly the MD frame's wire time
    hw = measure(path, MeasureOptions(convention="hardware"))
    assert (hw.per_trigger["t_md_ns"] - m.per_trigger["t_md_ns"]).tolist() == [wire_ns(frames[1_000], rate)] * 2


def test_pcap_without_directions_uses_the_roles(tmp_path):
    rows, _ = timeline()
    path = tmp_path / "hand.pcap"
    rate = 10**9
    write_pcap(path, [(ts + (wire_ns(f, rate) if d == 1 else 0), f) for ts, f, d in rows])
    m = measure(path, MeasureOptions(convention="software", line_rate_bps=rate))
    assert m.per_trigger["tick_to_trade_ns"].tolist() == [500, 600]
    assert m.tcp["flows"] == 2                             # without flags the venue's flow is framed too


@pytest.mark.parametrize("epoch_packets", [1 << 21, 1, 2, 3])
def test_small_batches_and_parts_give_the_same_answer(tmp_path, epoch_packets):
    rows, _ = timeline()
    path = tmp_path / "hand.pcapng"
    write_pcapng(path, rows)
    whole = measure(path, MeasureOptions(line_rate_bps=GBPS10))
    pieces = measure(path, MeasureOptions(line_rate_bps=GBPS10, batch_packets=1, epoch_packets=epoch_packets))
    assert pieces.parts == len(rows) // epoch_packets + 1       # a part every epoch_packets, and the rest
    for name, column in whole.per_trigger.items():
        assert pieces.per_trigger[name].tolist() == column.tolist(), name
    assert (pieces.counts, pieces.tcp) == (whole.counts, whole.tcp)
    for kind, listed in whole.misses.items():
        assert {k: v.tolist() for k, v in pieces.misses[kind].items()} == {k: v.tolist() for k, v in listed.items()}


def test_linux_cooked_capture(tmp_path):
    rows, _ = timeline()
    cooked = []
    for ts, frame, d in rows:
        ip = bytes(Ether(frame)[IP])
        cooked.append((ts + (ethernet_wire_ns(14 + len(ip), 10**9) if d == 1 else 0),
                       bytes(CookedLinux(pkttype=0 if d == 1 else 4, proto=0x0800) / IP(ip))))
    path = tmp_path / "any.pcap"
    write_pcap(path, cooked, linktype=113)
    m = measure(path, MeasureOptions(convention="software", line_rate_bps=10**9))
    assert m.per_trigger["t_md_ns"].tolist() == [1_000, 2_000]      # wire time from 14 + IPv4 length
    assert m.per_trigger["tick_to_trade_ns"].tolist() == [500, 600]


def fix_order(trigger_seq: int, msg_seq: int) -> bytes:
    return NewOrderSingle(sender="WIRELAB1", target="VENUEGW1", msg_seq_num=msg_seq, sending_time_ns=0, account=7,
                          client_order_id=msg_seq, trigger_seq=trigger_seq, symbol="I0000042", side=1, qty=100,
                          price=10**8, transact_time_ns=0).encode()


def test_fix_orders_split_and_matched_by_tag(tmp_path):
    a, b = fix_order(100, 2), fix_order(101, 3)
    cut = NEW_ORDER_SINGLE_PREFIX_BYTES
    rows = [(0, syn_frame(), 2), (1_000, md_frame(100), 1), (1_100, md_frame(101), 1),
            (1_400, order_frame(a[:cut], 0), 2), (1_900, order_frame(a[cut:] + b, cut), 2)]
    path = tmp_path / "fix.pcapng"
    write_pcapng(path, rows)
    m = measure(path, MeasureOptions())
    assert m.per_trigger["md_seq"].tolist() == [100, 101]
    assert m.per_trigger["tick_to_trade_ns"].tolist() == [400, 800]
    assert m.per_trigger["order_last_frame_first_bit_ns"].tolist() == [1_900, 1_900]
    by_client_id = measure(path, MeasureOptions(match=parse_match("fix-tag:11")))   # ClOrdID 2, 3: no such MD
    assert by_client_id.counts["matched"] == 0 and by_client_id.counts["unmatched_orders"] == 2


def test_nearest_matching_uses_the_completing_frame(tmp_path):
    o1, o2 = new_order(0, 1), new_order(0, 2)                       # no trigger seq at all
    rows = [(0, syn_frame(), 2),
            (500, order_frame(o1[:PREFIX], 0), 2),                  # prefix primed before the MD
            (1_000, md_frame(7), 1),
            (1_800, order_frame(o1[PREFIX:], PREFIX), 2),           # completes after MD 7
            (2_000, md_frame(8), 1),
            (2_100, md_frame(9), 1),
            (2_500, order_frame(o2, 48), 2)]
    path = tmp_path / "near.pcapng"
    write_pcapng(path, rows)
    m = measure(path, MeasureOptions(match=parse_match("nearest")))
    assert m.per_trigger["md_seq"].tolist() == [7, 9]
    assert m.per_trigger["tick_to_trade_ns"].tolist() == [500 - 1_000, 400]   # from the first bit, as defined
    assert m.misses["unmatched_md"]["seq"].tolist() == [8]


def test_flow_filters_and_foreign_market_data(tmp_path):
    foreign = bytes(Ether() / IP(src=FEED, dst="239.9.9.9") / UDP(sport=1, dport=7000) / (b"ITCH" + bytes(40)))
    other_feed = bytes(Ether() / IP(src=FEED, dst="239.2.2.2") / UDP(sport=1, dport=5000) / md_payload(100))
    rows = [(0, syn_frame(), 2), (900, foreign, 1), (950, other_feed, 1), (1_000, md_frame(100), 1),
            (1_500, order_frame(new_order(100, 1), 0), 2)]
    path = tmp_path / "flows.pcapng"
    write_pcapng(path, rows)
    everything = measure(path, MeasureOptions())
    assert everything.counts["md_messages"] == 2                     # both WM feeds; the ITCH one is not MD
    assert everything.misses["duplicate_md"]["packet"].tolist() == [4]
    assert everything.per_trigger["t_md_ns"].tolist() == [950]      # the first capture of seq 100
    ours = measure(path, MeasureOptions(md_flow=parse_endpoint(f"{GROUP}:5000")))
    assert ours.per_trigger["t_md_ns"].tolist() == [1_000]
    itch = measure(path, MeasureOptions(md_flow=parse_endpoint("239.9.9.9:7000"), match=parse_match("nearest")))
    assert itch.counts["md_messages"] == 1 and itch.per_trigger["tick_to_trade_ns"].tolist() == [600]
    none = measure(path, MeasureOptions(order_flow=parse_endpoint(f"{VENUE}:1234")))
    assert none.counts["orders"] == 0


def test_parse_endpoint():
    assert str(parse_endpoint("239.1.1.1:5000")) == "239.1.1.1:5000"
    for bad in ("239.1.1.1", "x:1", "239.1.1.1:0", "239.1.1.1:70000", "::1:5"):
        with pytest.raises(MeasureError):
            parse_endpoint(bad)


def test_md_seq_checks_the_header():
    good = md_payload(42)
    payloads = [good, good[:-1], b"WX" + good[2:], good[:4] + b"\x00\x01" + good[6:], good + b"\0",
                good[:3] + b"\x02" + good[4:]]
    frames = [bytes(Ether() / IP() / UDP() / p) for p in payloads] + [bytes(Ether() / IP() / TCP() / good)]
    batch = batch_of(frames + [frames[0]])
    batch.caplen[-1] = 14 + 20 + 8 + 23          # the header cut one byte short of n_trades
    _, seq = decode(batch, [1], md_seq=True)
    assert seq.tolist() == [42, -1, -1, -1, -1, -1, -1, -1]


def test_unsupported_link_type_is_counted(tmp_path):
    path = tmp_path / "odd.pcap"
    write_pcap(path, [(1, md_frame(1)), (2, md_frame(2))], linktype=147)
    m = measure(path)
    assert m.undecoded == {"unsupported link type": 2} and m.per_trigger["md_seq"].size == 0


def test_software_needs_a_line_rate(tmp_path):
    path = tmp_path / "x.pcap"
    write_pcap(path, [(1, md_frame(1))])
    with pytest.raises(convention.ConventionError, match="line-rate"):
        measure(path, MeasureOptions(convention="software"))


def test_a_void_order_completes_its_prefix_but_is_not_an_order(tmp_path):
    """tcp-prefix engines cancel a primed order by completing it with quantity 0 (a void)."""
    void = bytearray(new_order(0, 9))
    void[40:48] = bytes(8)                                     # qty 0
    real = new_order(101, 10)
    rows = [(100, syn_frame(), 2), (1_000, md_frame(100), 1), (1_100, md_frame(101), 1),
            (1_200, order_frame(void[:PREFIX], 0), 2), (1_300, order_frame(void[PREFIX:], PREFIX), 2),
            (1_400, order_frame(real, 48), 2)]
    path = tmp_path / "void.pcapng"
    write_pcapng(path, rows)
    m = measure(path)
    assert m.counts["orders"] == 1 and m.counts["unmatched_orders"] == 0 and m.tcp["void_orders"] == 1
    assert m.per_trigger["md_seq"].tolist() == [101] and m.per_trigger["order_first_bit_ns"].tolist() == [1_400]


def test_only_the_named_interface_is_measured(tmp_path):
    taps = [Interface(1, "1e-9", 0, "host-tap"), Interface(1, "1e-9", 0, "exchange-tap")]
    path = tmp_path / "two-taps.pcapng"
    with PcapngWriter(path, taps) as writer:
        for tap, shift in ((0, 0), (1, 5_000)):
            writer.write(tap, 100 + shift, syn_frame())
            writer.write(tap, 1_000 + shift, md_frame(100))
            writer.write(tap, 1_500 + shift, order_frame(new_order(100, 1), 0))
    for name, t_md in (("host-tap", 1_000), ("exchange-tap", 6_000)):
        m = measure(path, MeasureOptions(interface=name))
        assert m.counts["orders"] == 1 and m.counts["duplicate_orders"] == 0
        assert m.per_trigger["t_md_ns"].tolist() == [t_md]
    assert measure(path).counts["md_messages"] == 2            # both taps, when no interface is named
    with pytest.raises(MeasureError, match="no interface named 'nic'"):
        measure(path, MeasureOptions(interface="nic"))

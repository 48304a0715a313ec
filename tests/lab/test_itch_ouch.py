"""ITCH 5.0 in MoldUDP64 and OUCH 4.2 in SoupBinTCP, in captures: `lab synth` writes them, `lab
measure` finds the protocols by sniffing and measures them to the nanosecond of the truth, tshark's
own dissectors read the same bytes the same way, and bad input is counted, never fatal."""
import json
import shutil
import struct
import subprocess

import numpy as np
import pandas as pd
import pytest

from engine.protocol import itch50, ouch42
from lab.capture import Interface, PcapngWriter, open_capture
from lab.cli import main
from lab.synth import SynthConfig, synthesize, write_capture, write_links, write_truth
from lab.synth.addresses import GATEWAY_PORT, MD_PORT

TRIGGERS = 400


def synth(tmp_path, fmt="pcapng", convention="hardware", orders="ouch42", seed=5):
    synthesis = synthesize(SynthConfig(triggers=TRIGGERS, seed=seed, md_format="itch50", order_format=orders))
    paths = {"capture": tmp_path / f"s.{fmt}", "truth": tmp_path / "truth.csv", "links": tmp_path / "links.tel"}
    write_capture(synthesis, str(paths["capture"]), fmt, convention)
    write_truth(synthesis, str(paths["truth"]))
    write_links(synthesis, str(paths["links"]))
    return synthesis, paths


def measure_json(capsys, *args):
    assert main(["measure", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("fmt, convention", [("pcapng", "hardware"), ("pcap", "software")])
def test_telemetry_links_every_ouch_order_to_its_itch_trigger_exactly(tmp_path, capsys, fmt, convention):
    _, paths = synth(tmp_path, fmt, convention)
    rate = ["--line-rate", "10Gbps"] if convention == "software" else []
    report = measure_json(capsys, "--pcap", paths["capture"], "--telemetry", paths["links"], "--convention",
                          convention, *rate, "--csv", tmp_path / "rows.csv")
    assert report["protocols"] == {"md": "itch50", "orders": ["ouch42"]} and report["match"] == "trigger"
    assert report["matched"] == TRIGGERS and report["unmatched_orders"] == 0
    assert not any(report["md_problems"].values()) and report["tcp"]["framing_errors"] == []
    truth = pd.read_csv(paths["truth"]).sort_values("md_seq")
    rows = pd.read_csv(tmp_path / "rows.csv").sort_values("md_seq")
    assert rows["md_seq"].tolist() == truth["md_seq"].tolist()
    assert rows["tick_to_trade_ns"].tolist() == truth["tick_to_trade_ns"].tolist()


def test_binary_orders_on_an_itch_feed_match_by_their_trigger_seq(tmp_path, capsys):
    _, paths = synth(tmp_path, orders="binary")
    report = measure_json(capsys, "--pcap", paths["capture"], "--csv", tmp_path / "rows.csv")
    assert report["protocols"] == {"md": "itch50", "orders": ["binary"]} and report["matched"] == TRIGGERS
    truth = pd.read_csv(paths["truth"]).sort_values("md_seq")
    assert pd.read_csv(tmp_path / "rows.csv").sort_values("md_seq")["tick_to_trade_ns"].tolist() == \
        truth["tick_to_trade_ns"].tolist()


def test_without_telemetry_ouch_falls_back_to_the_nearest_market_data(tmp_path, capsys):
    _, paths = synth(tmp_path)
    report = measure_json(capsys, "--pcap", paths["capture"])
    assert report["match"] == "nearest" and report["orders"] == TRIGGERS
    assert 0 < report["matched"] <= TRIGGERS
    named = measure_json(capsys, "--pcap", paths["capture"], "--md", "itch50", "--orders", "ouch42",
                         "--match", "trigger")
    assert named["matched"] == 0 and named["unmatched_orders"] == TRIGGERS   # OUCH carries no trigger seq


def _udp_payloads(path, port):
    """(frame number, UDP payload) of every datagram to `port`, read with scapy."""
    from scapy.all import UDP, Ether
    out = []
    with open_capture(path) as capture:
        number = 0
        for batch in capture.batches():
            for i in range(len(batch)):
                number += 1
                frame = Ether(bytes(batch.data[batch.offset[i]:batch.offset[i] + batch.caplen[i]]))
                if UDP in frame and frame[UDP].dport == port:
                    out.append((number, bytes(frame[UDP].payload)))
    return out


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (apt-get install tshark)")
def test_tshark_reads_every_moldudp64_and_ouch_field_as_the_lab_writes_and_decodes_it(tmp_path):
    synthesis, paths = synth(tmp_path)
    decode_as = ["-o", "tcp.reassemble_out_of_order:TRUE",          # the synth swaps a few segments
                 "-d", f"udp.port=={MD_PORT},moldudp64", "-d", f"tcp.port=={GATEWAY_PORT},soupbintcp"]
    mold = subprocess.run(["tshark", "-r", paths["capture"], *decode_as, "-Y", "moldudp64", "-T", "fields",
                           "-e", "frame.number", "-e", "moldudp64.session", "-e", "moldudp64.sequence",
                           "-e", "moldudp64.count", "-e", "moldudp64.msglen"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    ours = []
    for number, payload in _udp_payloads(paths["capture"], MD_PORT):
        found = itch50.frame_packets(payload, [0], [len(payload)])
        session, sequence, count = struct.unpack_from(">10sQH", payload)
        ours.append(f"{number}\t{session.decode()}\t{sequence}\t{count}\t"
                    + ",".join(map(str, found.length.tolist())))
        assert found.seq.tolist() == list(range(sequence, sequence + count))
    assert mold == ours and len(ours) == synthesis.counts["md_datagrams"]

    ouch = subprocess.run(["tshark", "-r", paths["capture"], *decode_as, "-Y", "ouch.packet_type == 0x4f",
                           "-T", "fields", "-e", "ouch.order_token", "-e", "ouch.shares", "-e", "ouch.price",
                           "-e", "ouch.buy_sell_indicator"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    orders = synthesis.host_stream[len(ouch42.PROTOCOL.synth_session()[0]):]
    records = np.frombuffer(orders[:TRIGGERS * ouch42.ENTER_ORDER_PACKET].tobytes(),
                            np.dtype([("soup", ouch42.SOUP.dtype), ("order", ouch42.ENTER_ORDER.dtype)]))
    expected = [f"{t.decode()}\t{s}\t{p}\t'{side.decode()}'" for t, s, p, side in
                zip(records["order"]["order_token"], records["order"]["shares"], records["order"]["price"],
                    records["order"]["side"])]
    seen = list(dict.fromkeys(ouch))                   # a retransmitted order appears twice
    assert seen == expected
    assert [int(t.split("\t")[0]) for t in seen] == synthesis.order_ids.tolist()


def _mold(seq, blocks, count=None, session=b"WIRELAB001"):
    body = b"".join(struct.pack(">H", len(b)) + b for b in blocks)
    return struct.pack(">10sQH", session, seq, len(blocks) if count is None else count) + body


def test_malformed_moldudp64_packets_are_counted_by_reason_and_never_fatal():
    add = itch50.ADD_ORDER.struct.pack(b"A", 1, 0, bytes(6), 7, b"B", 100, b"I0000042", 1_000_000)
    cases = {
        "count_beyond_messages": _mold(10, [add], count=3),
        "message_past_datagram": _mold(20, [add])[:-5],
        "zero_length_messages": _mold(30, [b"", add]),
        "undecoded_types": _mold(40, [b"Q" + bytes(20)]),
        "wrong_message_lengths": _mold(50, [add[:-1]]),
        "heartbeats": _mold(60, [], count=0),
        "end_of_session": _mold(70, [], count=0xFFFF),
    }
    for reason, packet in cases.items():
        found = itch50.PROTOCOL.messages(packet, [0], [len(packet)])
        assert found.problems[reason] == 1, reason
        assert sum(found.problems.values()) == 1 or reason == "zero_length_messages", (reason, found.problems)
    for empty, kind in ((0, "heartbeats"), (0xFFFF, "end_of_session")):      # no messages, yet bytes after
        packet = _mold(90, [], count=empty) + b"xy"
        found = itch50.PROTOCOL.messages(packet, [0], [len(packet)])
        assert {k: v for k, v in found.problems.items() if v} == {kind: 1, "bytes_after_messages": 1}
    ok = _mold(80, [add, add])
    found = itch50.PROTOCOL.messages(ok + cases["message_past_datagram"], [0, len(ok)],
                                     [len(ok), len(cases["message_past_datagram"])])
    assert found.seq.tolist() == [80, 81] and found.problems["message_past_datagram"] == 1


def _tcp_capture(path, client_bytes: bytes):
    """A pcapng of one TCP segment from 198.18.0.10:40001 to the gateway carrying `client_bytes`."""
    from scapy.all import IP, TCP, Ether
    frame = bytes(Ether() / IP(src="198.18.0.10", dst="198.19.0.1") /
                  TCP(sport=40001, dport=GATEWAY_PORT, seq=1, flags="PA") / client_bytes)
    with PcapngWriter(path, [Interface(1, "1e-9", 0, "tap")]) as writer:
        writer.write(0, 1_000, frame)


@pytest.mark.parametrize("tail, problem", [
    (struct.pack(">H", 0) + b"U", "framing"),                                         # Soup length 0
    (struct.pack(">H", 0xFFFF) + b"U" + bytes(16), "framing"),                        # Soup length 65535
    (ouch42.soup(b"Q", b"x"), "framing"),                                             # unknown Soup type
    (ouch42.soup(b"U", b"O" + bytes(20)), "orders_cut_mid_field"),                    # an order cut short
    (ouch42.soup(b"U", b"K" + bytes(20)), "unknown_ouch_types"),
])
def test_bad_soup_and_ouch_bytes_are_counted_and_the_orders_before_them_kept(tmp_path, capsys, tail, problem):
    login = ouch42.PROTOCOL.synth_session()[0]
    order = ouch42.Ouch42Client(1, "WLAB01").order(12, 0, 42, 1, 3, 100 * 10**8, 100)
    _tcp_capture(tmp_path / "bad.pcapng", login + order + tail)
    report = measure_json(capsys, "--pcap", tmp_path / "bad.pcapng", "--orders", "ouch42")
    assert report["orders"] == 1                                  # the whole order before the bad bytes
    if problem == "framing":
        assert len(report["tcp"]["framing_errors"]) == 1
    else:
        assert report["tcp"]["order_problems"][problem] == 1

"""`lab compare`: strategies side by side over many triggers, their costs and the sweeps.

Every expectation is derived here from the seed's KRX numbers (shared/REFERENCE.md) in
bits / rate: 1 byte takes 80 ns at 100 Mb/s and 31.25 us at 256 kb/s. krx-2008 frames
are "raw" (a 500-byte packet is 500 bytes on the wire); the order path is 100 Mb/s ->
store-and-forward switch -> 100 Mb/s -> modem -> 256 kb/s -> modem -> 100 Mb/s.
"""
import json
import math
import os
import subprocess
import sys

import pytest

from lab.compare import CompareOptions, compare
from lab.errors import LabError

NS_PER_BYTE_100M = 8 * 10**9 // 100_000_000        # 80 ns
NS_PER_BYTE_256K = 8 * 10**9 // 256_000            # 31,250 ns
HOPS_100M = 3                                      # host->switch, switch->modem, modem->gateway
PREFIX = 20                                        # the KRX standard header
TCP_IP = 40
UDP_IP = 28


def per_byte_on_order_path(nbytes: int) -> int:
    """Time `nbytes` fewer bytes save over every store-and-forward hop of the KRX order path."""
    return nbytes * (NS_PER_BYTE_256K + HOPS_100M * NS_PER_BYTE_100M)


# implied(none) = wait for the 500 B MD frame at 100 Mb/s (40 us) + processing (20 us)
NONE_IMPLIED_NS = 500 * NS_PER_BYTE_100M + 20_000
# savings against none, per strategy, for one trigger with nothing queued
EARLY_READ_NS = (500 * NS_PER_BYTE_256K + 100_000 + 500 * NS_PER_BYTE_100M + 20_000 + 500 * NS_PER_BYTE_100M
                 - (UDP_IP + 20) * NS_PER_BYTE_256K)  # whole frame at the host minus 48 B at the telco gear
EXPECTED_SAVINGS_NS = {
    "none": 0,
    "tcp-prefix": per_byte_on_order_path(PREFIX),               # 625 us + 3 x 1.6 us
    "tcp-out-of-order": per_byte_on_order_path(PREFIX),         # ooo_bytes defaults to the prefix
    # fragment 1 = (TCP 20 + prefix 20) // 8 * 8 = 40 B of the TCP segment; fragment 2 carries
    # IP 20 + the other 440: 40 B fewer than the whole 500 B order on every hop
    "ip-fragment": per_byte_on_order_path(40),
    # the frame starts when IP+TCP headers + prefix (60 B) would have left at 100 Mb/s; the next
    # hops store and forward, so only the first hop gains
    "eth-abort": (TCP_IP + PREFIX) * NS_PER_BYTE_100M,
    "early-read": EARLY_READ_NS,
    "tcp-prefix+early-read": EARLY_READ_NS + per_byte_on_order_path(PREFIX),
}


def run_json(lab, *args):
    result = lab("compare", "--scenario", "krx-2008", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def quiet_krx(lab):
    """krx-2008 at 0.5 MD messages/s: most orders never meet another on any link."""
    return run_json(lab, "--rate", "0.5", "--messages", "200")


def test_strategies_are_ordered_by_hand_derived_savings(quiet_krx):
    doc = quiet_krx
    assert doc["scenario"] == "krx-2008" and doc["messages"] == 200 and doc["trade_share"] == 0.3
    by_name = {s["name"]: s for s in doc["strategies"]}
    assert set(by_name) == set(EXPECTED_SAVINGS_NS)
    assert {name: s["savings_ns"] for name, s in by_name.items()} == EXPECTED_SAVINGS_NS
    # most negative p50 first = largest saving first (tcp-prefix and tcp-out-of-order tie)
    assert [s["savings_ns"] for s in doc["strategies"]] == sorted(EXPECTED_SAVINGS_NS.values(), reverse=True)
    assert by_name["none"]["implied_tick_to_trade_ns"]["p50"] == NONE_IMPLIED_NS == 60_000
    assert by_name["tcp-prefix"]["implied_tick_to_trade_ns"]["p50"] == 60_000 - 629_800   # -569.8 us
    for s in doc["strategies"]:
        assert s["implied_tick_to_trade_ns"]["count"] == doc["triggers"]


def test_sweeps_follow_bits_over_rate(quiet_krx):
    sweeps = quiet_krx["sweeps"]
    # percolation: every extra store-and-forward 100 Mb/s hop saves the prefix again
    hops = [row["savings_ns"]["tcp-prefix"] for row in sweeps["hops"]]
    assert [row["hops"] for row in sweeps["hops"]] == list(range(1, 9))
    assert hops == [k * PREFIX * NS_PER_BYTE_100M for k in range(1, 9)]          # 1.6 us per hop
    # prefix size: linear, each byte saved once per hop
    for row in sweeps["prefix_bytes"]:
        assert row["savings_ns"]["tcp-prefix"] == per_byte_on_order_path(row["prefix_bytes"])
    assert len(sweeps["prefix_bytes"]) >= 3
    # line rate: doubling every order-path rate halves the saving
    line = sweeps["line_rate"]
    assert [row["factor"] for row in line] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert [row["bottleneck_rate_bps"] for row in line] == [128_000, 256_000, 512_000, 1_024_000, 2_048_000]
    prefix_savings = [row["savings_ns"]["tcp-prefix"] for row in line]
    assert prefix_savings[1] == per_byte_on_order_path(PREFIX)
    assert all(slow == 2 * fast for slow, fast in zip(prefix_savings, prefix_savings[1:]))
    # early-read: every byte read later at the telco gear costs its 31.25 us on the 256 kb/s feed
    early = sweeps["early_read_bytes"]
    offsets = [row["early_read_bytes"] for row in early]
    values = [row["savings_ns"]["early-read"] for row in early]
    assert len(early) >= 3
    for (b1, s1), (b2, s2) in zip(zip(offsets, values), zip(offsets[1:], values[1:])):
        assert s1 - s2 == (b2 - b1) * NS_PER_BYTE_256K


def test_costs_follow_the_trade_share(lab):
    messages, share = 600, 0.6
    doc = run_json(lab, "--messages", messages, "--trade-share", share, "--seed", 7)
    by_name = {s["name"]: s for s in doc["strategies"]}
    triggers = by_name["none"]["implied_tick_to_trade_ns"]["count"]
    assert triggers == doc["triggers"]
    sd = math.sqrt(messages * share * (1 - share))
    assert abs(triggers - messages * share) < 5 * sd                     # the seeded draw honours P
    misses = messages - triggers
    eth, prefix, none = by_name["eth-abort"]["costs"], by_name["tcp-prefix"]["costs"], by_name["none"]["costs"]
    assert eth["killed_frames_per_1000_md"] == round(1000 * misses / messages, 3)
    assert prefix["killed_frames_per_1000_md"] == 0 == none["killed_frames_per_1000_md"]
    assert prefix["never_completed_share"] == round(misses / messages, 6) == eth["never_completed_share"]
    assert prefix["started_messages"] == messages and prefix["completed_orders"] == triggers
    assert none["never_completed_share"] == 0 and none["started_messages"] == triggers
    # extra bytes per order on the first (raw) hop: one more TCP/IP header, or one more IP header
    assert (prefix["extra_wire_bytes"], by_name["ip-fragment"]["costs"]["extra_wire_bytes"],
            eth["extra_wire_bytes"]) == (TCP_IP, 20, 0)
    # the bottleneck is the 256 kb/s channel: tcp-prefix puts 60 + 480 B on it per order instead of 500;
    # eth-abort's killed frames die at the first switch and never reach it
    assert none["bottleneck_hop"] == "order-e1-256k"
    assert prefix["link_occupancy"] == pytest.approx(none["link_occupancy"] * 540 / 500, rel=1e-4)
    assert eth["link_occupancy"] == none["link_occupancy"] > 0


def test_queueing_between_orders_shows():
    """MD messages back to back on the 256 kb/s feed (one every 500 B = 15.625 ms), every one a trigger.
    none: each 500 B order fits its 15.625 ms slot on the 256 kb/s order channel, so no queueing.
    tcp-prefix: per slot the channel carries a 480 B rest and the next 60 B prefix, primed right after
    the order: 540 B = 16.875 ms, so each order waits 1.25 ms more than the one before."""
    comparison = compare(CompareOptions("krx-2008", ["tcp-prefix"], messages=6, rate=1e9, trade_share=1.0))
    by_name = {r.name: r.implied_ns.tolist() for r in comparison.strategies}
    assert by_name["none"] == [NONE_IMPLIED_NS] * 6
    backlog_per_order = (TCP_IP + PREFIX + 480 - 500) * NS_PER_BYTE_256K
    assert backlog_per_order == 1_250_000
    assert by_name["tcp-prefix"] == [NONE_IMPLIED_NS - per_byte_on_order_path(PREFIX) + k * backlog_per_order
                                     for k in range(6)]


def test_plot_and_table(lab, tmp_path):
    png = tmp_path / "compare.png"
    result = lab("compare", "--scenario", "krx-2008", "--messages", "100", "--strategies", "none,tcp-prefix",
                 "--plot", png)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[3:5]] == ["tcp-prefix", "none"]
    assert "savings against hop count" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["--scenario", "no-such-scenario"], "no-such-scenario"),
    (["--scenario", "krx-2008", "--strategies", "tcp-prefix,bogus"], "bogus"),
    (["--scenario", "krx-2008", "--messages", "0"], "--messages"),
    (["--scenario", "krx-2008", "--trade-share", "1.5"], "--trade-share"),
    (["--scenario", "krx-2008", "--rate", "-3"], "--rate"),
    (["--scenario", "krx-2008", "--plot", "figure.svg"], "PNG"),
])
def test_bad_input_is_one_line_exit_2(lab, tmp_path, args, words):
    result = lab("compare", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options", [CompareOptions("krx-2008", trade_share=0), CompareOptions("krx-2008", rate=0.0),
                                     CompareOptions("krx-2008", messages=2, trade_share=1e-6)])
def test_bad_options_raise_lab_error(options):
    with pytest.raises(LabError):
        compare(options)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="lab run captures with AF_PACKET: needs root")


@needs_root
def test_real_runs_beside_the_simulation(lab, tmp_path):
    doc = run_json(lab, "--real", "--messages", "40", "--strategies", "none,tcp-prefix", "--out", tmp_path)
    real = {s["name"]: s["implied_tick_to_trade_ns"] for s in doc["strategies"] if s["name"].startswith("real:")}
    assert set(real) == {"real:none", "real:tcp-prefix"}
    assert real["real:tcp-prefix"]["count"] > 0 and real["real:none"]["count"] > 0
    assert real["real:tcp-prefix"]["p50"] < 0 < real["real:none"]["p50"]
    assert (tmp_path / "tcp-prefix.pcapng").exists() and (tmp_path / "none.pcapng").exists()


@needs_root
def test_real_without_capture_permission_uses_the_sockets_stamps(tmp_path, drop_net_raw):
    result = subprocess.run([sys.executable, "-m", "lab", "compare", "--scenario", "krx-2008", "--real",
                             "--strategies", "none,tcp-prefix", "--messages", "20", "--json"],
                            capture_output=True, text=True, timeout=120, preexec_fn=drop_net_raw, cwd=tmp_path)
    if result.returncode == 77:
        pytest.skip("cannot drop CAP_NET_RAW here (no CAP_SETPCAP)")
    assert result.returncode == 0, result.stderr
    names = [s["name"] for s in json.loads(result.stdout)["strategies"]]
    assert {"real:none", "real:tcp-prefix"} <= set(names)

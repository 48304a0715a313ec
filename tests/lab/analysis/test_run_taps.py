"""The pieces behind `lab run` and `lab measure --telemetry`, without root: taps, run info, clocks, stages."""
import numpy as np
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from wirecap import HOST, HOST_PORT, ISN, VENUE, VENUE_PORT, FEED_PORT, batch_of, md_frame, new_order, order_frame

from lab.analysis.correlation import CorrelationError, causality, run_calibration
from lab.analysis.measure import MeasureOptions, measure
from lab.capture import Interface, PcapngWriter
from lab.run.implied import STAGES, implied, unstamped_triggers
from lab.run.runinfo import read_run_info, run_info_comment, section_comments
from lab.run.taps import HostLink, build_taps, write_taps
from simulator.scenario import load_scenario

IN, OUT = 1, 2
KRX = load_scenario("krx-2008")
NS_PER_BYTE_100M = 80                      # 100 Mb/s, raw framing: the packet is its bytes on the wire
PS_PER_BIT_256K = 3_906_250                # 256 kb/s


def krx_order_arrival_ns(departures_ns, l3_bytes):
    """krx-2008's order path by hand: 100 Mb/s, 20 us store-and-forward switch, 100 Mb/s, the modem
    stores the frame and sends it at 256 kb/s (FIFO), 100 Mb/s to the gateway."""
    free, out = 0, []
    for t, size in zip(departures_ns, l3_bytes):
        at_modem = t * 1000 + 2 * size * NS_PER_BYTE_100M * 1000 + 20_000_000
        start = max(at_modem, free)
        free = start + size * 8 * PS_PER_BIT_256K
        out.append((free + size * NS_PER_BYTE_100M * 1000) // 1000)
    return out


def reply_frame():
    return bytes(Ether() / IP(src=VENUE, dst=HOST) / TCP(sport=VENUE_PORT, dport=HOST_PORT, seq=7, flags="PA")
                 / (b"x" * 32))


def run_batch():
    md = [md_frame(seq) for seq in (1, 2)]
    first, second = new_order(1, 1), new_order(2, 2)
    frames = [md[0], md[0], order_frame(first, 0), reply_frame(), md[1], order_frame(second, 48)]
    stamps = [1_000_000, 1_000_400, 1_100_000, 1_150_000, 1_200_000, 1_210_000]
    direction = [OUT, IN, OUT, OUT, IN, OUT]           # lo shows MD twice; the incoming copy is the delivery
    return batch_of(frames, stamps, direction=direction), frames


def test_taps_move_each_frame_to_its_tap_by_the_scenarios_numbers():
    batch, frames = run_batch()
    transit_ps = np.array([15_000_000_000, 16_000_000_000], np.int64)
    kernel_tx = np.array([1_100_300, 0], np.int64)     # the engine stamped its first order's send
    taps = build_taps(batch, [1], KRX, [FEED_PORT], [VENUE_PORT], np.array([1, 2], np.uint64), transit_ps, kernel_tx)
    assert taps.kinds == {"md": 2, "md_unscheduled": 0, "to_venue": 2, "to_venue_data": 2,
                          "to_venue_kernel_tx_stamped": 1, "from_venue": 1}
    ip = [len(f) - 14 for f in frames]
    host = dict(zip(taps.frames.ts_ns.tolist(), taps.host_ns.tolist()))
    assert host[1_000_400] == 1_000_400 - ip[1] * NS_PER_BYTE_100M            # MD: delivery - wire time
    assert host[1_100_300] == 1_100_300                                       # order: its kernel TX stamp
    assert host[1_150_000] == 1_150_000 - ip[3] * NS_PER_BYTE_100M            # the venue's reply
    assert 1_000_000 not in host                                              # the outgoing MD copy is not used
    exchange = taps.exchange_ns.tolist()
    assert exchange[:2] == [1_000_400 - 15_000_000, 1_200_000 - 16_000_000]   # MD leaving the exchange
    assert exchange[2:] == krx_order_arrival_ns([1_100_300, 1_210_000], [ip[2], ip[5]])
    assert taps.order_l3_header_bytes == 40


def test_the_run_capture_is_self_describing_and_measurable_per_tap(tmp_path):
    batch, _frames = run_batch()
    path = tmp_path / "run.pcapng"
    syn = bytes(Ether() / IP(src=HOST, dst=VENUE) / TCP(sport=HOST_PORT, dport=VENUE_PORT, seq=ISN, flags="S"))
    with_syn = batch_of([syn] + [batch.frame(i) for i in range(len(batch))], [900_000] + batch.ts_ns.tolist(),
                        direction=[OUT] + batch.direction.tolist())
    taps = build_taps(with_syn, [1], KRX, [FEED_PORT], [VENUE_PORT], np.array([1, 2], np.uint64),
                      np.array([500_000_000, 600_000_000]), np.zeros(0, np.int64))
    written = write_taps(path, taps, KRX, run_info_comment({"scenario": "krx-2008"}))
    assert written == len(taps.host_ns) + len(taps.exchange)
    assert read_run_info(path) == {"format": "wirelab-run/1", "scenario": "krx-2008"}
    host = measure(path, MeasureOptions(interface="host-tap")).per_trigger
    exchange = measure(path, MeasureOptions(interface="exchange-tap")).per_trigger
    assert host["md_seq"].tolist() == exchange["md_seq"].tolist() == [1, 2]
    assert host["order_first_bit_ns"].tolist() == [1_100_000, 1_210_000]
    assert exchange["order_last_frame_first_bit_ns"].tolist() == taps.exchange_ns[3:].tolist()


def test_section_comments_of_other_files(tmp_path):
    path = tmp_path / "plain.pcapng"
    with PcapngWriter(path, [Interface(1, "1e-9", 0, "x")]) as writer:
        writer.write(0, 1, md_frame(1))
    assert section_comments(path) == [] and read_run_info(path) is None
    with PcapngWriter(path, [Interface(1, "1e-9", 0, "x")], comment="hello") as writer:
        pass
    assert section_comments(path) == ["hello"] and read_run_info(path) is None


def samples(t0, start_ns, count, drift_ppm):
    """Bracketed (tsc, realtime, tsc) samples every 0.5 ms of a 2 GHz TSC that runs drift_ppm fast
    from t0 on (integers: the fit, not the test, is what may round)."""
    real = start_ns + np.arange(count, dtype=np.int64) * 500_000
    elapsed = real - t0
    tsc = 10**12 + 2 * elapsed + (2 * elapsed * drift_ppm) // 10**6
    return np.stack([tsc - 20, real, tsc + 20], axis=1).tolist()


def test_run_calibration_measures_a_drift_it_was_given():
    t0 = 1_700_000_000 * 10**9
    start, later = samples(t0, t0, 100, 0), t0 + 10 * 10**9
    _calibration, report = run_calibration(start, samples(t0, later, 100, 3))    # 3 ppm fast, 10 s on
    assert report["drift_ppm"] == pytest.approx(3.0, abs=0.01)
    _calibration, report = run_calibration(start, samples(t0, later, 100, 0))
    assert abs(report["drift_ppm"]) < 0.001 and report["residual_p99_ns"] <= 2
    with pytest.raises(CorrelationError):
        run_calibration(start[:3], start)


def test_causality_counts_each_pair_out_of_order():
    chain = {"a": np.array([1, 5, 3]), "b": np.array([2, 4, 3]), "c": np.array([3, 3, 2])}
    assert causality(chain) == {"causality_violations": 3, "by_pair": {"a > b": 1, "b > c": 2}}


def test_stages_telescope_to_the_implied_tick_to_trade():
    from engine.clock import Calibration
    calibration = Calibration(base_tsc=0, base_ns=0, frequency_hz=10**9, residual_ns_p99=0, bracket_ns_median=0,
                              drift_ppm=0, samples=2)
    orders = np.zeros(3, [("md_seq", "<u8"), ("venue", "<u2"), ("kernel_rx_ns", "<i8"), ("app_in_tsc", "<u8"),
                          ("decision_tsc", "<u8"), ("app_out_tsc", "<u8"), ("kernel_tx_ns", "<i8"),
                          ("order_bytes", "<u4"), ("prefix_bytes", "<u4")])
    orders["md_seq"] = [7, 7, 9]                            # two orders for trigger 7: the first counts
    orders["kernel_rx_ns"], orders["app_in_tsc"] = [1_000, 1_000, 5_000], [1_100, 1_100, 5_200]
    orders["decision_tsc"], orders["app_out_tsc"] = [1_150, 1_150, 5_250], [1_200, 1_900, 5_300]
    orders["kernel_tx_ns"] = [1_300, 2_000, 5_400]
    orders["order_bytes"], orders["prefix_bytes"] = 32, 16
    host = {"md_seq": np.array([9, 7]), "t_md_ns": np.array([4_000, 500]),
            "order_last_frame_first_bit_ns": np.array([5_400, 1_300])}
    exchange = {"md_seq": np.array([7, 9]), "order_last_frame_first_bit_ns": np.array([2_700_000, 2_800_000])}
    rows = implied(host, exchange, orders, calibration, HostLink(KRX), 40)
    assert rows["md_seq"].tolist() == [7, 9]
    baseline = [t + (3 * 88 * NS_PER_BYTE_100M * 1000 + 20_000_000 + 88 * 8 * PS_PER_BIT_256K) // 1000
                for t in (500, 4_000)]
    assert rows["implied_tick_to_trade_ns"].tolist() == [2_700_000 - baseline[0], 2_800_000 - baseline[1]]
    assert rows["app_ns"].tolist() == [100, 100]
    total = sum(rows[f"{stage}_ns"] for stage in STAGES)
    assert total.tolist() == rows["implied_tick_to_trade_ns"].tolist()
    orders["kernel_rx_ns"][2] = 0                          # the kernel gave trigger 9 no RX stamp: left out
    assert implied(host, exchange, orders, calibration, HostLink(KRX), 40)["md_seq"].tolist() == [7]
    assert unstamped_triggers(orders) == 1


def test_telemetry_must_be_a_readable_telemetry_file(tmp_path, lab):
    """On any capture --telemetry links orders to triggers (OUCH); on a run's, it adds the stages."""
    plain = tmp_path / "plain.pcapng"
    with PcapngWriter(plain, [Interface(1, "1e-9", 0, "x")]) as writer:
        writer.write(0, 1, md_frame(1))
    done = lab("measure", "--pcap", plain, "--telemetry", tmp_path / "none.tel")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "none.tel: not a readable wirelab telemetry file" in done.stderr
    run = tmp_path / "run.pcapng"
    with PcapngWriter(run, [Interface(1, "1e-9", 0, "host-tap")], comment=run_info_comment({})) as writer:
        writer.write(0, 1, md_frame(1))
    (tmp_path / "junk.tel").write_bytes(b"not an npz")
    for telemetry in ("missing.tel", "junk.tel"):
        done = lab("measure", "--pcap", run, "--telemetry", tmp_path / telemetry)
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
        assert f"{telemetry}: not a readable wirelab telemetry file" in done.stderr


def test_reads_are_cut_where_the_engine_sent_separately():
    from lab.run.sockets import loopback_frames, order_pieces
    from lab.venue.gateway import RECORD_DTYPE, Read
    records = np.zeros(2, RECORD_DTYPE)
    records["kind"] = [b"new", b"new"]
    records["stream_offset"], records["message_bytes"] = [0, 48], [48, 48]
    # one read: the primed prefix of order 1; the next: its rest, order 2's prefix, its rest, and a
    # prefix primed for an order that never completed (no record)
    reads = [Read(40000, 10, 0, bytes(16)), Read(40000, 20, 16, bytes(32 + 16 + 32 + 16))]
    cuts = [(start, end) for _read, start, end in order_pieces(reads, records, 16)]
    assert cuts == [(0, 16), (16, 48), (48, 64), (64, 96), (96, 112)]
    assert [(s, e) for _r, s, e in order_pieces(reads, records, None)] == [(0, 16), (16, 48), (48, 96), (96, 112)]
    frame = loopback_frames([False], [40000], [9000], [17], [0x18], [b"x" * 5])[0].tobytes()
    parsed = IP(frame[14:])
    assert parsed[TCP].dataofs * 4 == 32 and parsed[TCP].seq == 17 and bytes(parsed[TCP].payload) == b"x" * 5
    ours = parsed.chksum
    del parsed.chksum                                          # scapy computes it afresh
    assert parsed.len == 20 + 32 + 5 and IP(bytes(parsed)).chksum == ours


def test_an_unknown_interface_is_one_line_exit_2(tmp_path, lab):
    path = tmp_path / "one.pcapng"
    with PcapngWriter(path, [Interface(1, "1e-9", 0, "host-tap")]) as writer:
        writer.write(0, 1, md_frame(1))
    done = lab("measure", "--pcap", path, "--interface", "no-such-tap")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "no-such-tap" in done.stderr

"""Every seed figure in REFERENCE.md, derived here from bits, rates and the essay's numbers."""
from fractions import Fraction

from simulator.framing import FRAMINGS
from simulator.path import Link, compile_path
from simulator.scenario import load_scenario, parse_scenario
from simulator.strategies import simulate
from simulator.units import bits_time_ps, parse_rate

US = 10**6   # ps
NS = 10**3


def ps(bits, rate_bps):
    """bits / rate in picoseconds, exactly (the test's own arithmetic, not the code's)."""
    value = Fraction(bits * 10**12, rate_bps)
    assert value.denominator == 1, "figure is not a whole number of ps"
    return int(value)


def test_500_byte_frame_at_100mbps_is_40us_and_one_bit_10ns():
    assert ps(1, 100_000_000) == 10 * NS
    assert bits_time_ps(500 * 8, parse_rate("100Mbps")) == 40 * US == ps(4000, 100_000_000)


def test_256kbps_bit_and_frame():
    assert bits_time_ps(1, parse_rate("256kbps")) == 3_906_250 == ps(1, 256_000)
    assert bits_time_ps(4000, parse_rate("256kbps")) == 15_625 * US


def test_fibre_5us_per_km_and_a_40us_frame_spans_8km():
    path = compile_path("p", [Link("fibre", 100_000_000, 8 * 5 * US, FRAMINGS["raw"])])
    t = path.transit([0], [500])
    # the first bit reaches the far end just as the last bit leaves the near end
    assert int(t.first_bit(path.end)[0]) == int(t.last_bit(path.start)[0]) == 40 * US
    s = parse_scenario('[[md_path]]\ntype="link"\nrate="1Gbps"\nlength_km=8\n[market_data]\npayload_bytes=10')
    assert s.md_path.hops[0].delay_ps == 8 * 5 * US


def krx():
    strategies = ["none", "tcp-prefix", "early-read"]
    return simulate(load_scenario("krx-2008"), strategies)


def test_krx_market_data_chain_before_the_hosts_last_bit():
    sim = krx()
    points = {p.name: p for p in sim.flows["md"][0].points}
    host_last = points["host-nic"].last_bit_ps
    wire_100m = ps(500 * 8, 100_000_000)           # 40 us
    channel = ps(500 * 8, 256_000)                  # 15,625 us
    switch, telco = 20 * US, 100 * US
    t_md0 = -wire_100m
    t_md1 = t_md0 - switch - wire_100m
    t_md2 = t_md1 - channel
    t_md3 = t_md2 - telco
    assert (t_md0, t_md1, t_md2, t_md3) == (-40 * US, -100 * US, -15_725 * US, -15_825 * US)
    assert points["host-nic"].first_bit_ps - host_last == t_md0
    assert points["switch-in"].first_bit_ps - host_last == t_md1
    assert points["modem-in"].first_bit_ps - host_last == t_md2
    assert points["telco-gear"].first_bit_ps - host_last == t_md3
    assert sim.t_md_ps == points["host-nic"].first_bit_ps


def test_krx_prefix_saves_625us_and_gives_the_seeds_minus_565us_itemised_per_hop():
    r = krx().strategies["tcp-prefix"]
    prefix_bits = 20 * 8
    bottleneck = ps(prefix_bits, 256_000)
    per_100m_hop = ps(prefix_bits, 100_000_000)
    assert bottleneck == 625 * US and per_100m_hop == 1_600 * NS
    wait, processing = 40 * US, 20 * US
    assert r.wait_for_frame_ps == wait and r.processing_ps == processing
    assert wait + processing - bottleneck == -565 * US          # the seed, bottleneck only
    assert r.savings_ps == {"host-to-switch": per_100m_hop, "switch-to-modem": per_100m_hop,
                            "order-e1-256k": bottleneck, "modem-to-gateway": per_100m_hop}
    assert r.implied_tick_to_trade_ps == -565 * US - 3 * per_100m_hop
    assert r.implied_tick_to_trade_ps == r.arbiter_arrival_ps - r.baseline_arrival_ps
    assert r.wait_for_frame_ps + r.processing_ps + r.host_tx_ps - sum(r.savings_ps.values()) == \
        r.implied_tick_to_trade_ps


def test_krx_none_is_positive_and_equals_wait_plus_processing():
    r = krx().strategies["none"]
    assert r.implied_tick_to_trade_ps == 60 * US == r.tick_to_trade_ps


def test_krx_early_read_at_the_telco_tap_rides_the_earliest_bit():
    sim = krx()
    r = sim.strategies["early-read"]
    points = {p.name: p for p in sim.flows["md"][0].points}
    needed = 20 + 8 + 20                       # IPv4 + UDP headers + the 20-byte bid field
    read_at = points["telco-gear"].first_bit_ps + ps(needed * 8, 256_000)
    assert r.wait_for_frame_ps == read_at - sim.t_md_ps
    assert r.implied_tick_to_trade_ps == read_at - sim.t_md_ps + 20 * US


def ethernet_wire(payload, transport_header):
    return 8 + max(14 + 20 + transport_header + payload + 4, 64)


def test_bats_prefix_200ns_early_read_800ns_together_1us():
    s = load_scenario("bats-2009-1g")
    assert ethernet_wire(s.market_data.payload_bytes, 8) == 200
    read_point = 8 + 14 + 20 + 8 + s.market_data.early_read_bytes
    assert read_point == 100
    sim = simulate(s, ["none", "tcp-prefix", "early-read", "tcp-prefix+early-read"])
    base = sim.strategies["none"].implied_tick_to_trade_ps
    saved = {n: base - r.implied_tick_to_trade_ps for n, r in sim.strategies.items()}
    assert saved["tcp-prefix"] == ps(25 * 8, 10**9) == 200 * NS
    assert saved["early-read"] == ps((200 - 100) * 8, 10**9) == 800 * NS
    assert saved["tcp-prefix+early-read"] == 1_000 * NS


def test_same_protocol_at_10g_saves_125_bytes_100ns():
    sim = simulate(load_scenario("modern-10g"), ["none", "tcp-prefix+early-read"])
    saved = sim.strategies["none"].implied_tick_to_trade_ps - \
        sim.strategies["tcp-prefix+early-read"].implied_tick_to_trade_ps
    assert saved == ps(125 * 8, 10 * 10**9) == 100 * NS


def test_64_byte_frames_at_10g_51_2ns_67_2ns_and_14_88_mpps():
    rate = 10 * 10**9
    assert ps(64 * 8, rate) == 51_200
    assert ps((8 + 64 + 12) * 8, rate) == 67_200
    path = compile_path("p", [Link("10g", rate, 0, FRAMINGS["ethernet"])])
    n = 10_000
    t = path.transit([0] * n, [46] * n)             # 14 + 46 + 4 = the 64-byte minimum frame
    first = t.first_bit(path.start)
    assert int(t.last_bit(path.start)[0] - first[0]) == ps((8 + 64) * 8, rate)   # lone frame: no IFG
    assert set((first[1:] - first[:-1]).tolist()) == {67_200}
    pps = Fraction(n - 1) / Fraction(int(first[-1] - first[0]), 10**12)
    assert round(float(pps) / 1e6, 2) == 14.88


def test_fpga_tick_to_trade_under_100ns():
    sim = simulate(load_scenario("fpga-10g"), ["early-read"])
    assert 0 < sim.strategies["early-read"].tick_to_trade_ps < 100 * NS


def test_chicago_nj_fibre_6_65ms_microwave_under_4_25ms():
    s = load_scenario("chicago-nj")
    fibre = next(h for h in s.paths["fibre"].hops if h.name == "long-haul-fibre")
    assert fibre.delay_ps == 1330 * 5 * US == 6_650 * US
    air = next(h for h in s.md_path.hops if h.name == "microwave")
    assert air.delay_ps == round(Fraction(1190 * 1000 * 10**12, 299_792_458))   # distance / c
    sim = simulate(s)
    md_one_way = sim.flows["md"][0].points[-1].first_bit_ps
    assert md_one_way < 4_250 * US < 6_650 * US < sim.flows["fibre"][0].points[-1].first_bit_ps


def test_refractive_index_medium():
    s = parse_scenario('[[md_path]]\ntype="link"\nrate="1Gbps"\nlength_km=1\nmedium=1.47\n'
                       '[market_data]\npayload_bytes=10')
    assert s.md_path.hops[0].delay_ps == round(Fraction(147 * 10**13, 299_792_458))   # n * 1 km / c
    assert 4_890 * NS < s.md_path.hops[0].delay_ps < 4_910 * NS     # about 4.90 us/km

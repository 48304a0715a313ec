"""Columnar decode against scapy and dpkt, on every supported link type."""
import dpkt
import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, Loopback
from scapy.packet import Raw
from wirecap import batch_of, md_frame, write_pcapng

from lab.analysis import decode as D

rng = np.random.default_rng(7)


def ip_packets():
    """IPv4 packets of every shape the decode handles."""
    return [
        IP(src="198.18.0.1", dst="239.1.1.1") / UDP(sport=5000, dport=5001) / Raw(b"WM" + bytes(40)),
        IP(src="198.18.0.2", dst="198.18.1.1") / TCP(sport=40000, dport=9000, seq=123456, ack=99,
                                                      flags="PA") / Raw(b"order-bytes"),
        IP(src="198.18.0.2", dst="198.18.1.1") / TCP(sport=40000, dport=9000, seq=2**32 - 3, flags="S",
                                                      options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]),
        IP(src="10.1.2.3", dst="10.3.2.1", options=[(b"\x94\x04\x00\x00")]) / TCP(
            sport=1, dport=2, seq=7, ack=8, flags="A") / Raw(b"x" * 3),               # IP options, padded frame
        IP(src="10.1.2.3", dst="10.3.2.1") / UDP(sport=53, dport=53) / Raw(b""),     # empty UDP payload
        IP(src="10.9.9.9", dst="10.8.8.8") / ICMP(),                                 # neither TCP nor UDP
    ]


def frames_for(linktype: int, packet) -> bytes:
    ip = bytes(packet)
    if linktype == 1:
        return bytes(Ether() / packet)
    if linktype == 113:
        return bytes(CookedLinux(proto=0x0800) / packet)
    if linktype == 276:
        return bytes(CookedLinuxV2(proto=0x0800) / packet)
    if linktype in (101, 228):
        return ip
    if linktype == 0:
        return bytes(Loopback(type=2) / packet)
    raise AssertionError(linktype)


def expected(frame: bytes, linktype: int) -> dict:
    """Fields as scapy and dpkt read them (scapy for headers, dpkt for the payload bytes)."""
    header = {1: 14, 113: 16, 276: 20, 101: 0, 228: 0, 0: 4}[linktype]
    if linktype == 1:
        eth = dpkt.ethernet.Ethernet(frame)
        header = len(frame) - len(bytes(eth.data)) if isinstance(eth.data, dpkt.ip.IP) else header
    ip = IP(frame[header:])
    dip = dpkt.ip.IP(frame[header:])
    row = {"src_ip": int.from_bytes(bytes(map(int, ip.src.split("."))), "big"),
           "dst_ip": int.from_bytes(bytes(map(int, ip.dst.split("."))), "big"), "proto": ip.proto,
           "ip_len": ip.len, "l3_offset": header}
    if TCP in ip:
        t = ip[TCP]
        row.update(src_port=t.sport, dst_port=t.dport, tcp_seq=t.seq, tcp_ack=t.ack, tcp_flags=int(t.flags),
                   payload=bytes(dip.data.data))
    elif UDP in ip:
        row.update(src_port=ip[UDP].sport, dst_port=ip[UDP].dport, tcp_seq=0, tcp_ack=0, tcp_flags=0,
                   payload=bytes(dip.data.data))
    else:
        row.update(src_port=0, dst_port=0, tcp_seq=0, tcp_ack=0, tcp_flags=0, payload=bytes(dip.data))
    return row


def check_rows(table, batch, frames, linktypes):
    for i, (frame, linktype) in enumerate(zip(frames, linktypes)):
        want = expected(frame, linktype)
        assert table.status[i] == D.OK, (i, linktype)
        for name, value in want.items():
            if name == "payload":
                start = int(table.payload_offset[i])
                got = batch.data[start:start + int(table.payload_len[i])].tobytes()
                assert got == value, (i, linktype)
                assert table.payload_caplen[i] == len(value)
            else:
                assert int(getattr(table, name)[i]) == value, (i, linktype, name)


@pytest.mark.parametrize("linktype", [1, 113, 276, 101, 228, 0])
def test_each_linktype_agrees_with_scapy_and_dpkt(linktype):
    frames = [frames_for(linktype, p) for p in ip_packets()]
    batch = batch_of(frames)
    table = D.decode(batch, [linktype])
    check_rows(table, batch, frames, [linktype] * len(frames))
    assert (table.linktype == linktype).all()


def test_mixed_interfaces_in_one_batch():
    linktypes = [1, 113, 276, 101, 228, 0]
    frames, interface = [], []
    for index, linktype in enumerate(linktypes):
        for packet in ip_packets():
            frames.append(frames_for(linktype, packet))
            interface.append(index)
    order = rng.permutation(len(frames))
    frames = [frames[i] for i in order]
    interface = np.array(interface)[order]
    batch = batch_of(frames, interface=interface)
    table = D.decode(batch, linktypes)
    check_rows(table, batch, frames, [linktypes[i] for i in interface])


def test_vlan_and_qinq():
    inner = ip_packets()[1]
    frames = [bytes(Ether() / Dot1Q(vlan=10) / inner),
              bytes(Ether() / Dot1AD(vlan=20) / Dot1Q(vlan=10) / inner),
              bytes(Ether(type=0x9100) / Dot1Q(vlan=5) / Dot1Q(vlan=6) / inner),
              bytes(Ether() / Dot1Q(vlan=7) / inner)]
    batch = batch_of(frames)
    table = D.decode(batch, [1])
    assert table.vlan_tags.tolist() == [1, 2, 2, 1]
    assert table.l3_offset.tolist() == [18, 22, 22, 18]
    check_rows(table, batch, frames, [1] * 4)


def test_loopback_family_in_either_byte_order():
    packet = bytes(ip_packets()[1])
    frames = [b"\x02\x00\x00\x00" + packet, b"\x00\x00\x00\x02" + packet, b"\x18\x00\x00\x00" + packet]
    table = D.decode(batch_of(frames), [0])
    assert table.status.tolist() == [D.OK, D.OK, D.NOT_IPV4]      # 24 is AF_INET6 on BSD
    assert table.src_port.tolist() == [40000, 40000, 0]


def test_raw_ip_tells_v4_from_v6():
    frames = [bytes(ip_packets()[0]), bytes(IPv6() / UDP())]
    table = D.decode(batch_of(frames), [101])
    assert table.status.tolist() == [D.OK, D.NOT_IPV4]


def test_other_protocols_and_fragments_are_flagged():
    frames = [bytes(Ether() / ARP()), bytes(Ether() / IPv6() / UDP()),
              bytes(Ether() / IP(flags="MF", frag=0) / UDP() / Raw(b"a" * 16)),
              bytes(Ether() / IP(frag=3) / Raw(b"b" * 16)),
              bytes(Ether() / IP(ihl=4) / UDP()),
              bytes(Ether() / IP(len=30) / TCP())]                  # total length shorter than the headers
    table = D.decode(batch_of(frames), [1])
    assert table.status.tolist() == [D.NOT_IPV4, D.NOT_IPV4, D.IP_FRAGMENT, D.IP_FRAGMENT, D.BAD_IPV4, D.BAD_IPV4]
    assert table.src_ip[2] == int.from_bytes(bytes([127, 0, 0, 1]), "big")   # fragments keep their addresses
    assert table.src_port[2] == 0 and table.payload_len[2] == 0


def test_truncated_packets_at_every_length():
    frame = bytes(Ether() / Dot1Q() / IP(options=[b"\x94\x04\x00\x00"]) / TCP(options=[("MSS", 1)]) / Raw(b"p" * 10))
    header = 18 + 24 + 24
    cuts = [frame[:k] for k in range(len(frame) + 1)]
    batch = batch_of(cuts)
    table = D.decode(batch, [1])
    statuses = table.status.tolist()
    assert all(s == D.TRUNCATED or (s == D.NOT_IPV4 and k < 18) for k, s in enumerate(statuses[:header]))
    assert statuses[header:] == [D.OK] * (len(frame) + 1 - header)
    assert table.payload_len[header:].tolist() == [10] * (len(frame) + 1 - header)
    assert table.payload_caplen[header:].tolist() == list(range(11))


def test_snaplen_cut_payload_keeps_headers():
    frame = md_frame(5)
    batch = batch_of([frame])
    batch.caplen[:] = 14 + 20 + 8 + 32          # the MD header survives a short snaplen
    table = D.decode(batch, [1])
    assert table.status[0] == D.OK
    assert table.payload_len[0] == len(frame) - 42 and table.payload_caplen[0] == 32


def test_unknown_linktype_and_interface():
    frames = [md_frame(1), md_frame(2)]
    table = D.decode(batch_of(frames, interface=[0, 5]), [147])
    assert table.status.tolist() == [D.UNSUPPORTED_LINKTYPE] * 2
    assert table.status_counts() == {"unsupported link type": 2}


def test_garbage_never_raises_and_stays_inside_the_packet():
    frames = [rng.integers(0, 256, int(rng.integers(0, 80)), dtype=np.uint8).tobytes() for _ in range(3000)]
    # make many of them look like Ethernet + IPv4 so the deeper checks run
    frames = [f[:12] + b"\x08\x00\x45" + f[15:] if i % 2 and len(f) > 15 else f for i, f in enumerate(frames)]
    for linktype in (1, 113, 276, 101, 0):
        batch = batch_of(frames)
        table = D.decode(batch, [linktype])
        ok = table.status == D.OK
        end = batch.offset + batch.caplen
        assert (table.payload_offset[ok] + table.payload_caplen[ok] <= end[ok]).all()
        assert (table.payload_caplen <= table.payload_len).all() and (table.payload_caplen >= 0).all()
        assert set(np.unique(table.status)) <= set(D.STATUS_NAMES)


def test_empty_batch():
    table = D.decode(batch_of([]), [1])
    assert len(table) == 0 and table.status_counts() == {}


def test_decode_of_a_pcapng_read_back_matches_scapy(tmp_path):
    from scapy.utils import rdpcap

    from lab.capture import open_capture
    frames = [frames_for(1, p) for p in ip_packets()] * 3
    path = tmp_path / "mixed.pcapng"
    write_pcapng(path, [(1_000 + i, f, 1 + i % 2) for i, f in enumerate(frames)])
    with open_capture(path) as capture:
        batch = capture.read_all()
        table = D.decode(batch, [i.linktype for i in capture.interfaces])
    assert table.direction.tolist() == [1 + i % 2 for i in range(len(frames))]
    scapy_frames = [bytes(p) for p in rdpcap(str(path))]
    assert scapy_frames == frames
    check_rows(table, batch, scapy_frames, [1] * len(frames))


def test_to_pandas_has_every_column():
    frame = D.decode(batch_of([md_frame(3)]), [1]).to_pandas()
    assert {"ts_ns", "interface", "direction", "caplen", "wire_len", "src_ip", "dst_ip", "src_port", "dst_port",
            "proto", "tcp_seq", "tcp_ack", "tcp_flags", "payload_offset", "payload_len"} <= set(frame.columns)
    assert frame["dst_port"][0] == 5000


def test_rows_pointing_past_the_data_are_cut_there():
    # a caplen running past the buffer, an offset past it: nothing is read outside the data
    batch = batch_of([md_frame(1), md_frame(2), md_frame(3)])
    batch.caplen[1] = 10**6
    batch.offset[2] = batch.data.size + 100
    table, seq = D.decode(batch, [1], md_seq=True)
    assert table.status.tolist() == [D.OK, D.OK, D.TRUNCATED] and seq.tolist() == [1, 2, -1]
    assert table.payload_caplen[1] == table.payload_len[1]      # the frame itself is whole in the buffer


def test_workspace_is_reused_and_tables_stay_right():
    workspace = D.Workspace()
    first = D.decode(batch_of([md_frame(1)] * 3), [1], workspace=workspace)
    assert first.status.tolist() == [D.OK] * 3
    second = D.decode(batch_of([md_frame(1), b"\x00" * 10]), [1], workspace=workspace)
    assert second.status.tolist() == [D.OK, D.TRUNCATED] and len(second) == 2
    assert np.shares_memory(first.status, second.status)

"""Timing-card trailers, built per their published layouts (exact-capture's
docs/expcap.md; the Metamako trailer as Wireshark's dissector documents it)."""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from datetime import datetime, timezone

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from capture_builders import frame
from lab.capture import NO_TIMESTAMP, PcapWriter, open_capture
from lab.capture.trailers import decode_trailers

SECONDS = 1_700_000_000


def expcap_footer(seconds, picoseconds, flags=0, device=0, port=0, dropped=0) -> bytes:
    """16 bytes, little-endian, packed: secs u32, picos u40, flags, dev, port, dropped u16, reserved u16."""
    return (struct.pack("<I", seconds) + picoseconds.to_bytes(5, "little")
            + bytes([flags, device, port]) + struct.pack("<HH", dropped, 0))


def metamako_trailer(seconds, nanoseconds, flags=0, device=0, port=0, original_fcs=0x12345678) -> bytes:
    """Big-endian: original FCS u32, seconds u32, nanoseconds u32, flags u8, device u16, port u8."""
    return struct.pack(">IIIBHB", original_fcs, seconds, nanoseconds, flags, device, port)


def read_back(tmp_path, frames, snaplen=262144, name="t.pcap"):
    path = tmp_path / name
    with PcapWriter(path, snaplen=snaplen) as writer:
        writer.write_batch(np.full(len(frames), SECONDS * 10**9), frames)
    with open_capture(path) as capture:
        return path, capture.read_all()


def test_expcap_footer_picoseconds(tmp_path):
    picos = [0, 1, 999, 123_456_789_012, 999_999_999_999]
    frames = [frame(i) + expcap_footer(SECONDS + i, p, flags=i, device=3, port=7 - i)
              for i, p in enumerate(picos)]
    frames.append(expcap_footer(SECONDS, 10**12))  # picoseconds past the second: invalid
    frames.append(b"\x01" * 15)                     # shorter than a footer
    _, batch = read_back(tmp_path, frames)
    out = decode_trailers(batch, "expcap")
    assert out["valid"].tolist() == [True] * 5 + [False, False]
    # exact picoseconds since the epoch, from Python ints
    exact = [(SECONDS + i) * 10**12 + p for i, p in enumerate(picos)]
    assert [int(ns) * 1000 + int(ps) for ns, ps in zip(out["ts_ns"][:5], out["sub_ns_ps"][:5])] == exact
    assert out["ts_ns"][:5].tolist() == [e // 1000 for e in exact]
    assert out["device"][:5].tolist() == [3] * 5
    assert out["port"][:5].tolist() == [7, 6, 5, 4, 3]
    assert out["flags"][:5].tolist() == [0, 1, 2, 3, 4]
    assert out["ts_ns"][5:].tolist() == [NO_TIMESTAMP] * 2


@pytest.mark.parametrize("fcs_bytes", [0, 4])
def test_metamako_trailer(tmp_path, fcs_bytes):
    nanos = [0, 123_456_789, 999_999_999]
    fcs = b"\xaa\xbb\xcc\xdd"[:fcs_bytes]
    frames = [frame(i) + metamako_trailer(SECONDS + i, n, flags=1, device=0x0102 + i, port=9) + fcs
              for i, n in enumerate(nanos)]
    frames.append(frame(5) + metamako_trailer(SECONDS, 10**9) + fcs)  # ns out of range
    frames.append(b"\x02" * (15 + fcs_bytes))                         # too short
    _, batch = read_back(tmp_path, frames)
    out = decode_trailers(batch, "metamako", fcs_bytes=fcs_bytes)
    assert out["valid"].tolist() == [True, True, True, False, False]
    assert out["ts_ns"][:3].tolist() == [(SECONDS + i) * 10**9 + n for i, n in enumerate(nanos)]
    assert out["device"][:3].tolist() == [0x0102, 0x0103, 0x0104]
    assert out["port"][:3].tolist() == [9, 9, 9] and out["flags"][:3].tolist() == [1, 1, 1]
    assert out["sub_ns_ps"].tolist() == [0] * 5


def test_metamako_trailer_cut_by_snaplen_is_invalid(tmp_path):
    _, batch = read_back(tmp_path, [frame(1, 100) + metamako_trailer(SECONDS, 5)], snaplen=64)
    assert decode_trailers(batch, "metamako")["valid"].tolist() == [False]


def test_unknown_kind():
    with pytest.raises(ValueError, match="expcap, metamako"):
        decode_trailers(None, "erf")


def test_metamako_agrees_with_tshark(tmp_path):
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    udp = bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=5000, dport=6000)
                / Raw(b"md" * 20))
    nanos = [1, 500_000_000, 999_999_999]
    frames = [udp + metamako_trailer(SECONDS + i, n, device=40 + i, port=i) for i, n in enumerate(nanos)]
    path, batch = read_back(tmp_path, frames, name="mm.pcap")
    ours = decode_trailers(batch, "metamako")
    # Wireshark's metamako trailer heuristic is off by default.
    result = subprocess.run(["tshark", "-r", str(path), "--enable-heuristic", "metamako_eth",
                             "-T", "fields", "-e", "metamako.time", "-e", "metamako.srcdevice",
                             "-e", "metamako.srcport"], capture_output=True, text=True,
                            env={**os.environ, "TZ": "UTC"})
    if result.returncode != 0:
        pytest.skip(f"this tshark has no metamako_eth heuristic: {result.stderr.strip()}")
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 3 and all(row[0] for row in rows), result.stdout
    for row, ts_ns, device, port in zip(rows, ours["ts_ns"], ours["device"], ours["port"]):
        # "Nov 14, 2023 22:13:20.000000001 UTC": seconds by datetime, the 9 digits as text
        stamp, fraction = re.match(r"(.*)\.(\d{9}) UTC$", row[0]).groups()
        seconds = int(datetime.strptime(stamp, "%b %d, %Y %H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
        assert int(ts_ns) == seconds * 10**9 + int(fraction)
        assert (int(device), int(port)) == (int(row[1]), int(row[2]))

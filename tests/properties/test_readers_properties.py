"""Property tests (issue 16) of the capture readers (lab.capture.open_capture, as lab measure and
lab info read files): any bytes give packets or a one-line CaptureError, never another
exception; a capture cut at any byte keeps every whole record before the cut, exactly.

The captures are built with tests/lab/capture/capture_builders.py (struct, from the format
specs); the packets, their timestamps and each record's offset are known from the build, not
from the reader.
"""
from __future__ import annotations

import itertools
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.capture import NO_TIMESTAMP, CaptureError, open_capture
from wire_mutations import examples, mutated

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab" / "capture"))
from capture_builders import block, epb, idb, option, options, pcap_header, pcap_record, shb, spb  # noqa: E402

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
u32 = st.integers(0, 2**32 - 1)


@dataclass
class Packet:
    frame: bytes
    ts_ns: int
    wire_len: int
    interface: int = 0
    direction: int = 0


@dataclass
class Built:
    """A capture as a list of records (file header, pcap records, pcapng blocks), each with the
    packet it holds or None."""
    records: list[tuple[bytes, Packet | None]]

    @property
    def content(self) -> bytes:
        return b"".join(record for record, _ in self.records)

    def whole_before(self, cut: int) -> tuple[list[Packet], int]:
        """The packets of the records wholly before byte `cut`, and where the last of those records ends."""
        packets, end = [], 0
        for record, packet in self.records:
            if end + len(record) > cut:
                break
            end += len(record)
            if packet is not None:
                packets.append(packet)
        return packets, end


@st.composite
def pcap_captures(draw) -> Built:
    order = draw(st.sampled_from("<>"))
    nanosecond = draw(st.booleans())
    records = [(pcap_header(order, nanosecond, snaplen=draw(st.sampled_from((0, 64, 65535)))), None)]
    for _ in range(draw(st.integers(1, 5))):
        seconds, fraction = draw(u32), draw(u32)
        frame = draw(st.binary(max_size=90))
        wire_len = len(frame) + draw(st.sampled_from((0, 0, 1, 1000)))
        records.append((pcap_record(order, seconds, fraction, frame, wire_len=wire_len),
                        Packet(frame, seconds * 10**9 + fraction * (1 if nanosecond else 1000), wire_len)))
    return Built(records)


TSRESOLS = (None, 6, 9, 3, 0, 12, 0x80 | 10, 0x80 | 30)


def pcapng_ts(units: int, tsresol: int | None, tsoffset: int) -> int:
    """The spec's if_tsresol (10^-n, or 2^-n with the top bit) and if_tsoffset, in exact integers;
    sub-nanosecond parts floored; NO_TIMESTAMP where it does not fit int64."""
    tsresol = 6 if tsresol is None else tsresol
    exponent = tsresol & 0x7F
    if tsresol & 0x80:
        ns = units * 10**9 >> exponent
    elif exponent <= 9:
        ns = units * 10**(9 - exponent)
    else:
        ns = units // 10**(exponent - 9)
    ns += tsoffset * 10**9
    return ns if INT64_MIN < ns <= INT64_MAX else NO_TIMESTAMP


@st.composite
def pcapng_captures(draw) -> Built:
    """One or two sections (each its own byte order), interfaces of several resolutions and
    offsets, EPBs with and without flags, SPBs, and blocks a reader skips."""
    records, interfaces = [], 0
    for _ in range(draw(st.integers(1, 2))):
        order = draw(st.sampled_from("<>"))
        records.append((shb(order), None))
        section = []                       # (tsresol, tsoffset) per interface of this section
        for _ in range(draw(st.integers(1, 2))):
            tsresol = draw(st.sampled_from(TSRESOLS))
            tsoffset = draw(st.sampled_from((None, 0, 1_700_000_000, -5, 2**40)))
            records.append((idb(order, tsresol=tsresol, tsoffset=tsoffset, name=draw(st.sampled_from((None, "eth0")))),
                            None))
            section.append((tsresol, tsoffset or 0))
        for _ in range(draw(st.integers(1, 5))):
            kind = draw(st.sampled_from(("epb", "epb", "spb", "other")))
            frame = draw(st.binary(max_size=90))
            if kind == "epb":
                local = draw(st.integers(0, len(section) - 1))
                units = draw(st.integers(0, 2**64 - 1))
                flags = draw(st.sampled_from((None, 0, 1, 2, 3, 0x1000002)))
                wire_len = len(frame) + draw(st.sampled_from((0, 7)))
                direction = {None: 0, 3: 0}.get(flags, (flags or 0) & 3)
                records.append((epb(order, local, units, frame, wire_len=wire_len, flags=flags),
                                Packet(frame, pcapng_ts(units, *section[local]), wire_len, interfaces + local,
                                       direction)))
            elif kind == "spb":
                records.append((spb(order, frame), Packet(frame, NO_TIMESTAMP, len(frame), interfaces)))
            else:                          # a Name Resolution Block, or a custom block: skipped
                block_type = draw(st.sampled_from((4, 5, 0x40000BAD)))
                body = options(order, option(order, 1, frame)) if block_type != 0x40000BAD else frame
                records.append((block(order, block_type, body), None))
        interfaces += len(section)
    return Built(records)


CAPTURES = st.one_of(pcap_captures(), pcapng_captures())


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory(prefix="wirelab-properties-") as path:
        yield Path(path)


def read(path: Path, max_packets: int):
    """What a reader sees: each packet's (frame, ts, wire length, interface, direction), the
    damage, the interfaces and the stamp counts."""
    with open_capture(path) as capture:
        packets = []
        for batch in capture.batches(max_packets=max_packets):
            for i in range(len(batch)):
                start, caplen = int(batch.offset[i]), int(batch.caplen[i])
                assert 0 <= start and start + caplen <= capture.file_bytes
                packets.append(Packet(batch.frame(i), int(batch.ts_ns[i]), int(batch.wire_len[i]),
                                      int(batch.interface[i]), int(batch.direction[i])))
            del batch
        return packets, capture.damage, capture.interfaces, (capture.missing_ts, capture.non_monotonic)


def check_error(error: CaptureError, path: Path) -> None:
    message = str(error)
    assert "\n" not in message and message.startswith(str(path))


def check_damage(damage, size: int) -> None:
    for d in damage:
        assert isinstance(d.reason, str) and d.reason and "\n" not in d.reason
        assert 0 <= d.at_offset <= size and d.bytes_skipped >= 0 and d.records_skipped >= 0
        assert d.bytes_skipped <= size


@settings(max_examples=examples(150))
@given(data=st.data())
def test_any_bytes_give_packets_or_a_capture_error(folder, data):
    magic = st.sampled_from((b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
                             b"\x0a\x0d\x0d\x0a"))
    content = data.draw(st.one_of(
        st.binary(max_size=200),
        st.tuples(magic, st.binary(max_size=200)).map(b"".join),
        mutated(CAPTURES.map(lambda built: built.content), max_mutations=6)), label="content")
    path = folder / "any.cap"
    path.write_bytes(content)
    try:
        packets, damage, interfaces, _ = read(path, data.draw(st.integers(1, 4), label="max_packets"))
    except CaptureError as error:
        check_error(error, path)
        return
    check_damage(damage, len(content))
    for packet in packets:
        assert 0 <= packet.interface < max(len(interfaces), 1) and packet.direction in (0, 1, 2)


@settings(max_examples=examples(150))
@given(data=st.data())
def test_a_capture_cut_at_any_byte_keeps_every_whole_record_before_the_cut(folder, data):
    built = data.draw(CAPTURES, label="capture")
    content = built.content
    ends = list(itertools.accumulate(len(record) for record, _ in built.records))
    cut = data.draw(st.one_of(                 # anywhere, or at a record's end, or a byte either side of it
        st.integers(0, len(content)),
        st.tuples(st.sampled_from(ends), st.integers(-2, 2)).map(lambda at: min(max(sum(at), 0), len(content)))),
        label="cut")
    expected, boundary = built.whole_before(cut)
    path = folder / "cut.cap"
    path.write_bytes(content[:cut])
    header = len(built.records[0][0])          # the pcap file header, or the first SHB
    try:
        packets, damage, _, (missing_ts, non_monotonic) = read(path, data.draw(st.integers(1, 4), label="max_packets"))
    except CaptureError as error:
        assert cut < header, error             # only a file without its whole header is unreadable
        check_error(error, path)
        return
    assert cut >= header
    assert packets == expected
    assert sum(d.bytes_skipped for d in damage) == cut - boundary   # what was skipped is the cut record
    assert len(damage) == (cut > boundary)
    stamps = [p.ts_ns for p in expected if p.ts_ns != NO_TIMESTAMP]
    assert missing_ts == len(expected) - len(stamps)
    assert non_monotonic == sum(b < a for a, b in zip(stamps, stamps[1:]))

"""Bad files: an unreadable start is a one-line CaptureError naming the file; a
damaged tail keeps the good packets before it and says what was skipped."""
from __future__ import annotations

import random
import struct

import pytest

from capture_builders import block, epb, frame, idb, option, options, pcap_header, pcap_record, shb, spb
from lab.capture import CaptureError, open_capture
from lab.errors import LabError

GOOD_PCAP = pcap_header(nanosecond=True, snaplen=1500) + b"".join(
    pcap_record("<", 1_700_000_000, i, frame(i, 60 + i)) for i in range(3))
GOOD_PCAPNG = shb() + idb(tsresol=9, name="eth0") + b"".join(
    epb("<", 0, 1000 + i, frame(i, 60 + i), flags=1) for i in range(3))


def write(tmp_path, content: bytes, name="bad.cap"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def read(path):
    """Everything a reader of the file sees: packets (frames), damage, interfaces."""
    with open_capture(path) as capture:
        batch = capture.read_all()
        return [batch.frame(i) for i in range(len(batch))], capture.damage, capture.interfaces


@pytest.mark.parametrize("name, content, words", [
    ("empty", b"", "empty"),
    ("one byte", b"\xd4", "too short"),
    ("wrong magic", b"GIF89a" + bytes(100), "not a pcap or pcapng"),
    ("text", b"hello, this is not a capture\n" * 3, "not a pcap or pcapng"),
    ("truncated pcap header", GOOD_PCAP[:20], "truncated pcap header"),
    ("pcap version 3", pcap_header(major=3), "unsupported pcap version 3.4"),
    ("truncated SHB", GOOD_PCAPNG[:10], "section header"),
    ("SHB cut short", GOOD_PCAPNG[:20], "ends inside the section header"),
    ("bad byte-order magic", GOOD_PCAPNG[:8] + b"\x00\x00\x00\x00" + GOOD_PCAPNG[12:], "byte-order magic"),
    ("SHB length not multiple of 4", GOOD_PCAPNG[:4] + struct.pack("<I", 30) + GOOD_PCAPNG[8:],
     "block length 30"),
    ("SHB trailing mismatch", block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1),
                                    trailing=99), "trailing block length 99"),
    ("pcapng version 2", shb(major=2), "unsupported pcapng version 2.0"),
])
def test_unreadable_start_is_one_line_capture_error(tmp_path, name, content, words):
    path = write(tmp_path, content)
    with pytest.raises(CaptureError) as caught:
        open_capture(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert words in message
    assert isinstance(caught.value, LabError)  # the CLI prints it as one line, exit 2


def test_missing_file_and_directory_are_capture_errors(tmp_path):
    for path in (tmp_path / "nope.pcap", tmp_path):
        with pytest.raises(CaptureError, match="cannot read"):
            open_capture(path)


def test_truncated_last_pcap_record_keeps_the_good_packets(tmp_path):
    content = GOOD_PCAP[:-10]
    last = len(GOOD_PCAP) - (16 + 62)
    packets, [damage], _ = read(write(tmp_path, content))
    assert packets == [frame(0, 60), frame(1, 61)]
    assert (damage.at_offset, damage.bytes_skipped, damage.records_skipped) == (last, 16 + 52, 1)
    assert "file ends inside a record" in damage.reason


def test_truncated_pcap_record_header(tmp_path):
    packets, [damage], _ = read(write(tmp_path, GOOD_PCAP + b"\x01\x02\x03"))
    assert len(packets) == 3
    assert damage.reason == "file ends inside a record header"
    assert (damage.at_offset, damage.bytes_skipped) == (len(GOOD_PCAP), 3)


@pytest.mark.parametrize("snaplen, caplen, words", [
    (0, 262145, "caplen 262145 > 262144"),
    (1 << 31, 300_000, "caplen 300000 > 262144"),
])
def test_pcap_caplen_beyond_limits_is_damage(tmp_path, snaplen, caplen, words):
    good = pcap_record("<", 1, 0, frame(1))
    bad = struct.pack("<IIII", 2, 0, caplen, caplen) + bytes(64)
    packets, [damage], _ = read(write(tmp_path, pcap_header(snaplen=snaplen) + good + bad))
    assert packets == [frame(1)]
    assert words in damage.reason
    assert damage.at_offset == 24 + len(good)


def test_pcap_caplen_above_snaplen_is_a_packet(tmp_path):
    """libpcap and tshark read a record longer than the file's snaplen, up to the link type's maximum."""
    good, big = pcap_record("<", 1, 0, frame(1)), pcap_record("<", 2, 0, frame(2, 1501))
    packets, damage, _ = read(write(tmp_path, pcap_header(snaplen=1500) + good + big))
    assert packets == [frame(1), frame(2, 1501)] and damage == []


@pytest.mark.parametrize("bad_block, words", [
    (struct.pack("<II", 6, 13) + bytes(20), "bad block length 13"),
    (struct.pack("<II", 6, 8) + bytes(20), "bad block length 8"),
    (block("<", 6, bytes(20) + frame(9, 12), trailing=1234), "trailing block length 1234 != leading 44"),
    (epb("<", 0, 5, frame(9))[:-8], "file ends inside a record"),
    (b"\x06\x00\x00\x00\x40", "file ends inside a record header"),
])
def test_pcapng_framing_damage_keeps_packets_before_it(tmp_path, bad_block, words):
    content = GOOD_PCAPNG + bad_block
    packets, [damage], _ = read(write(tmp_path, content))
    assert packets == [frame(i, 60 + i) for i in range(3)]
    assert words in damage.reason
    assert damage.at_offset == len(GOOD_PCAPNG)
    assert damage.bytes_skipped == len(content) - len(GOOD_PCAPNG)
    assert damage.records_skipped == 1


@pytest.mark.parametrize("bad_block, words", [
    # caplen 500 in a block with room for 64
    (block("<", 6, struct.pack("<IIIII", 0, 0, 5, 500, 500) + frame(9, 64)),
     "too short for its header or caplen"),
    (block("<", 6, bytes(8)), "too short for its header or caplen"),
    (epb("<", 3, 5, frame(9)), "interface its section does not define"),
    # an option claiming 200 bytes in a block that has 8
    (block("<", 6, struct.pack("<IIIII", 0, 0, 5, 4, 4) + frame(9, 4)
           + struct.pack("<HH", 2, 200) + bytes(4)),
     "options overrun"),
])
def test_pcapng_unusable_block_is_skipped_alone(tmp_path, bad_block, words):
    content = GOOD_PCAPNG + bad_block + epb("<", 0, 7, frame(7)) + bad_block
    packets, [damage], _ = read(write(tmp_path, content))
    assert packets == [frame(i, 60 + i) for i in range(3)] + [frame(7)]
    assert words in damage.reason
    # both bad blocks are merged into one entry at the first
    assert (damage.at_offset, damage.bytes_skipped, damage.records_skipped) == (
        len(GOOD_PCAPNG), 2 * len(bad_block), 2)


def test_spb_before_any_idb_is_damage(tmp_path):
    content = shb() + spb("<", frame(1)) + idb() + spb("<", frame(2))
    packets, [damage], interfaces = read(write(tmp_path, content))
    assert packets == [frame(2)]
    assert "interface" in damage.reason and len(interfaces) == 1


def test_idb_with_bad_options_makes_its_packets_damage(tmp_path):
    bad_idb = block("<", 1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 9, 40))  # option overruns
    wrong_size_tsresol = block("<", 1, struct.pack("<HHI", 1, 0, 0)
                               + options("<", option("<", 9, b"\x09\x09")))
    content = (shb() + idb(name="good") + bad_idb + wrong_size_tsresol
               + epb("<", 1, 1, frame(1)) + epb("<", 2, 2, frame(2)) + epb("<", 0, 3, frame(3)))
    packets, damage, interfaces = read(write(tmp_path, content))
    assert packets == [frame(3)]
    assert [i.name for i in interfaces] == ["good"]
    assert {d.reason: d.records_skipped for d in damage} == {
        "unreadable interface description block": 2,
        "packet on an interface its section does not define or could not read": 2,
    }


def test_damaged_later_section_header_is_a_damaged_tail(tmp_path):
    bad_shb = shb()[:8] + b"\xde\xad\xbe\xef" + shb()[12:]
    content = GOOD_PCAPNG + bad_shb + idb() + epb("<", 0, 1, frame(1))
    packets, [damage], _ = read(write(tmp_path, content))
    assert len(packets) == 3
    assert "bad section header: bad byte-order magic" in damage.reason
    assert damage.bytes_skipped == len(content) - len(GOOD_PCAPNG)


def test_garbage_after_a_good_header_is_damage_not_an_exception(tmp_path):
    garbage = random.Random(7).randbytes(5000)
    for header in (pcap_header(), shb() + idb()):
        packets, damage, _ = read(write(tmp_path, header + garbage))
        assert len(damage) >= 1 or packets  # read without raising


def test_garbage_payloads_read_as_bytes(tmp_path):
    rng = random.Random(3)
    payloads = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(20)]
    content = pcap_header() + b"".join(pcap_record("<", 1, i, p) for i, p in enumerate(payloads))
    packets, damage, _ = read(write(tmp_path, content))
    assert packets == payloads and damage == []


def mutate(content: bytes, rng: random.Random) -> bytes:
    data = bytearray(content)
    choice = rng.randrange(4)
    if choice == 0:
        return bytes(data[:rng.randrange(len(data))])
    if choice == 1:
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 2:
        at = rng.randrange(len(data))
        data[at:at + 4] = rng.randbytes(4)
    else:
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randrange(1, 16))
    return bytes(data)


def test_fuzz_only_capture_error_or_success(tmp_path):
    rng = random.Random(20240601)
    originals = [
        GOOD_PCAP,
        pcap_header(">") + b"".join(pcap_record(">", 5, i, frame(i)) for i in range(4)),
        GOOD_PCAPNG + spb("<", frame(8)) + block("<", 5, bytes(12)),
        shb(">") + idb(">", tsresol=0x80 | 20, tsoffset=3) + epb(">", 0, 99, frame(1), flags=2)
        + shb("<") + idb("<") + epb("<", 0, 1, frame(2)),
    ]
    path = tmp_path / "fuzz.cap"
    outcomes = {"error": 0, "read": 0}
    for _ in range(400):
        content = mutate(rng.choice(originals), rng)
        path.write_bytes(content)
        try:
            with open_capture(path) as capture:
                for batch in capture.batches(max_packets=2):
                    ends = batch.offset + batch.caplen
                    assert ((batch.offset >= 0) & (ends <= len(content))).all()
                    assert (batch.interface < max(len(capture.interfaces), 1)).all()
                for damage in capture.damage:
                    assert 0 <= damage.at_offset and damage.at_offset + damage.bytes_skipped <= len(content)
            outcomes["read"] += 1
        except CaptureError as exc:
            assert "\n" not in str(exc)
            outcomes["error"] += 1
    assert outcomes["read"] > 100 and outcomes["error"] > 10

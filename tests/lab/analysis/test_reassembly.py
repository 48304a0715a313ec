"""TCP reassembly: split messages, retransmissions, out-of-order arrival, against hand-derived streams."""
import numpy as np

from lab.analysis.reassembly import Segments, reassemble

MESSAGE = bytes(range(65, 65 + 26)) + bytes(range(97, 97 + 26))   # A..Z a..z: 52 distinct bytes


def segments(rows):
    """rows: (flow, seq, payload) or (flow, seq, payload, "S"), in arrival order."""
    payloads = [r[2] for r in rows]
    lengths = np.array([len(p) for p in payloads], np.int64)
    return Segments(
        flow=np.array([r[0] for r in rows], np.int64),
        seq=np.array([r[1] % 2**32 for r in rows], np.uint32),
        length=lengths, captured=lengths.copy(),
        syn=np.array([len(r) > 3 and r[3] == "S" for r in rows]),
        payload=np.frombuffer(b"".join(payloads) or b"\0", np.uint8),
        where=np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64))


def owners(streams, flow, size):
    return streams.first_arrival(np.full(size, flow), np.arange(size)).tolist()


def test_in_order_stream_split_anywhere():
    cuts = [0, 1, 2, 16, 17, 40, 52]
    rows = [(0, 500 + a, MESSAGE[a:b]) for a, b in zip(cuts, cuts[1:])]
    streams = reassemble(segments(rows), 1)
    assert streams.stream(0).tobytes() == MESSAGE
    assert streams.duplicate_bytes == 0
    # byte k came with the segment whose range holds it
    assert owners(streams, 0, 52) == [int(np.searchsorted(cuts, k, side="right")) - 1 for k in range(52)]


def test_retransmission_keeps_the_first_arrival():
    rows = [(0, 100, b"", "S"), (0, 101, MESSAGE[:20]), (0, 121, MESSAGE[20:]), (0, 101, MESSAGE[:20]),
            (0, 111, MESSAGE[10:40])]                  # a repacketised retransmission overlapping both
    streams = reassemble(segments(rows), 1)
    assert streams.stream(0).tobytes() == MESSAGE
    assert owners(streams, 0, 52) == [1] * 20 + [2] * 32
    assert streams.duplicate_bytes == 20 + 30


def test_out_of_order_fills_in_when_it_arrives():
    # the rest of a message (bytes 16..52) arrives before its start; a later segment overlaps it
    rows = [(0, 1016, MESSAGE[16:52]), (0, 1000, MESSAGE[0:16]), (0, 1000, MESSAGE[0:30])]
    streams = reassemble(segments(rows), 1)
    assert streams.stream(0).tobytes() == MESSAGE
    assert owners(streams, 0, 52) == [1] * 16 + [0] * 36
    # complete when its last missing byte arrived: segment 1, though segment 0 holds the last byte
    first_bit, last_bit = np.array([100, 200, 300]), np.array([110, 220, 330])
    # spans out of position order too: the last one starts behind the one before it
    first, completing, last = streams.span_times(np.array([0, 0, 0, 0]), np.array([0, 20, 16, 0]),
                                                 np.array([52, 10, 1, 16]), first_bit, last_bit)
    assert completing.tolist() == [1, 0, 0, 1]
    assert first.tolist() == [100, 100, 100, 200] and last.tolist() == [220, 110, 110, 220]
    assert streams.span_times(np.array([0]), np.array([3]), np.array([1]), first_bit)[2] is None


def test_late_overlap_does_not_steal_bytes_that_arrived_earlier():
    # A [0,10) t0, C [20,30) t1, B [5,25) t2 (repacketised), D [10,20) t3: bytes 10..20 first come with B
    rows = [(0, 0, MESSAGE[0:10]), (0, 20, MESSAGE[20:30]), (0, 5, MESSAGE[5:25]), (0, 10, MESSAGE[10:20])]
    streams = reassemble(segments(rows), 1)
    assert streams.stream(0).tobytes() == MESSAGE[:30]
    assert owners(streams, 0, 30) == [0] * 10 + [2] * 10 + [1] * 10


def test_sequence_numbers_wrap():
    isn = 2**32 - 20
    rows = [(0, isn, b"", "S"), (0, isn + 1, MESSAGE[:15]), (0, isn + 31, MESSAGE[30:]),
            (0, isn + 16, MESSAGE[15:30])]
    streams = reassemble(segments(rows), 1)
    assert streams.stream(0).tobytes() == MESSAGE
    assert owners(streams, 0, 52) == [1] * 15 + [3] * 15 + [2] * 22


def test_syn_sets_the_start_so_a_lost_first_segment_is_a_hole():
    rows = [(0, 7, b"", "S"), (0, 8 + 16, MESSAGE[16:])]
    streams = reassemble(segments(rows), 1)
    assert streams.contiguous.tolist() == [0] and streams.extent.tolist() == [52]


def test_without_syn_the_lowest_seq_starts_the_stream():
    rows = [(0, 900, MESSAGE[10:20]), (0, 890, MESSAGE[0:10])]
    streams = reassemble(segments(rows), 1)
    assert streams.stream(0).tobytes() == MESSAGE[:20]


def test_hole_ends_the_usable_stream():
    rows = [(0, 0, MESSAGE[0:10]), (0, 20, MESSAGE[20:30])]
    streams = reassemble(segments(rows), 1)
    assert streams.stream(0).tobytes() == MESSAGE[:10]
    assert streams.extent.tolist() == [30]


def test_interleaved_flows_stay_apart():
    other = MESSAGE[::-1]
    rows = []
    for k in range(0, 52, 4):
        rows.append((1, 70_000 + k, other[k:k + 4]))
        rows.append((0, 5 + k, MESSAGE[k:k + 4]))
    rows.append((2, 1, b""))                              # a flow with no data at all
    streams = reassemble(segments(rows), 3)
    assert streams.stream(0).tobytes() == MESSAGE
    assert streams.stream(1).tobytes() == other
    assert streams.stream(2).size == 0
    assert owners(streams, 0, 52) == [2 * (k // 4) + 1 for k in range(52)]


def test_snaplen_cut_segment_leaves_a_hole():
    s = segments([(0, 0, MESSAGE[0:20]), (0, 20, MESSAGE[20:40])])
    s.captured[0] = 12                                    # only 12 of the first 20 bytes were captured
    streams = reassemble(s, 1)
    assert streams.stream(0).tobytes() == MESSAGE[:12]


def test_no_segments():
    streams = reassemble(segments([]), 0)
    assert streams.flows == 0 and streams.data.size == 0


def test_many_random_arrivals_match_a_byte_by_byte_model():
    rng = np.random.default_rng(11)
    stream = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    rows = []
    for _ in range(600):
        a = int(rng.integers(0, 2990))
        b = int(min(3000, a + rng.integers(1, 60)))
        rows.append((0, 10**6 + a, stream[a:b]))
    rows += [(0, 10**6 + k, stream[k:k + 100]) for k in range(0, 3000, 100)]   # make it complete
    streams = reassemble(segments(rows), 1)
    first = np.full(3000, -1)
    for index, (_, seq, payload) in enumerate(rows):            # the model: paint in arrival order
        span = slice(seq - 10**6, seq - 10**6 + len(payload))
        first[span] = np.where(first[span] < 0, index, first[span])
    base = int((first >= 0).argmax())
    assert streams.stream(0).tobytes() == stream[base:]
    assert owners(streams, 0, 3000 - base) == first[base:].tolist()

"""TCP reassembly per half-connection, vectorised over segments.

Input is every captured TCP segment of the flows of interest, in arrival order
(capture order). Output is each flow's byte stream from its first byte up to
its first hole, and for every stream byte the segment that delivered it FIRST:
a retransmission never moves a byte's time, an out-of-order segment fills its
place as soon as it arrives, and overlapping or repacketised retransmissions
are resolved byte by byte.

How, without a loop over segments:
- Sequence numbers are unwrapped per flow from the signed 32-bit step between
  consecutive segments (arrival order), so streams may pass 4 GiB.
- A flow's stream starts at its SYN's seq + 1, or at the lowest seq seen.
  (lab.analysis.flows carries a flow from one part of a capture to the next by
  putting a zero-length SYN just before the first byte still wanted.)
- All flows are laid end to end in one coordinate space, segments are sorted
  by (position, arrival), and np.maximum.accumulate of their ends splits them
  into runs of overlapping segments. A run of one segment owns all its bytes
  (the usual case). Runs of several (retransmissions, overlaps) are expanded
  to bytes and each byte goes to its earliest arrival.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.analysis._kernels import span_times
from lab.analysis.gather import gather_ragged

_WRAP = 1 << 32
_HALF = 1 << 31


@dataclass
class Segments:
    """TCP segments, one row each, in arrival order."""
    flow: np.ndarray       # int64, half-connection id (0..flows-1)
    seq: np.ndarray        # uint32, TCP sequence number
    length: np.ndarray     # int64, payload bytes per the headers
    captured: np.ndarray   # int64, payload bytes present (less when cut by the snaplen)
    syn: np.ndarray        # bool, SYN flag (the SYN takes one sequence number)
    payload: np.ndarray    # uint8, payload bytes of all segments
    where: np.ndarray      # int64, start of each segment's captured payload in `payload`

    def __len__(self) -> int:
        return self.flow.size


@dataclass
class Streams:
    """Reassembled streams.

    Positions: every flow has a range of the one coordinate space that holds all
    flows end to end (flow f starts at `start[f]`; piece_start is in it). Bytes:
    flow f's usable stream (from its first byte up to the first hole) is
    data[data_start[f] : data_start[f] + contiguous[f]]; usable streams lie back to back.
    """
    data: np.ndarray            # uint8
    data_start: np.ndarray      # int64 per flow
    start: np.ndarray           # int64 per flow, in the coordinate space
    contiguous: np.ndarray      # int64 per flow: bytes before the first hole
    extent: np.ndarray          # int64 per flow: bytes from the first to the highest seen
    piece_start: np.ndarray     # int64, sorted: runs of bytes delivered first by one segment
    piece_end: np.ndarray       # int64
    piece_segment: np.ndarray   # int64, that segment (index into Segments)
    position: np.ndarray        # int64 per segment: its first payload byte's offset in its flow's stream
    base_seq: np.ndarray        # int64 per flow: the TCP seq of stream offset 0 (0 .. 2**32-1)
    duplicate_bytes: int        # payload bytes that arrived again (retransmissions, overlaps, bytes
                                # before the stream's start)

    @property
    def flows(self) -> int:
        return self.start.size

    def stream(self, flow: int) -> np.ndarray:
        begin = int(self.data_start[flow])
        return self.data[begin: begin + int(self.contiguous[flow])]

    def first_arrival(self, flow: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Segment that first delivered byte `offset` of `flow`'s stream (one per query)."""
        position = self.start[flow] + np.asarray(offset, dtype=np.int64)
        return self.piece_segment[np.searchsorted(self.piece_start, position, side="right") - 1]

    def span_times(self, flow: np.ndarray, offset: np.ndarray, length: np.ndarray, first_bit: np.ndarray,
                   last_bit: np.ndarray | None = None):
        """For bytes [offset, offset + length) of each flow's stream (length >= 1), over the
        segments that first delivered them: (min of first_bit, max segment index, max of
        last_bit or None). first_bit/last_bit hold one value per segment.

        The max segment index (arrival order) is the segment that completed the span: the
        one carrying its last byte unless part of it arrived out of order.
        """
        position = self.start[flow] + np.asarray(offset, dtype=np.int64)
        n = position.size
        first_bit_min, segment_max = np.empty(n, np.int64), np.empty(n, np.int64)
        last_bit_max = None if last_bit is None else np.empty(n, np.int64)
        span_times(self.piece_start, _int64(self.piece_segment), _int64(position), _int64(length),
                   _int64(first_bit), _int64(last_bit), first_bit_min, segment_max, last_bit_max)
        return first_bit_min, segment_max, last_bit_max


def _int64(values: np.ndarray | None) -> np.ndarray | None:
    return None if values is None else np.ascontiguousarray(values, dtype=np.int64)


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Indices where a new group starts in a sorted array."""
    if sorted_keys.size == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))


def stream_positions(segments: Segments, flows: int) -> tuple[np.ndarray, np.ndarray]:
    """(position of each segment's first payload byte in its flow's stream, TCP seq of each
    flow's position 0).

    Position 0 is the byte after the flow's SYN, or the lowest byte seen.
    """
    n = len(segments)
    if n < 2 or bool((segments.flow[1:] >= segments.flow[:-1]).all()):   # one flow, or flows one after another
        by_flow = None
    else:
        by_flow = np.argsort(segments.flow, kind="stable")  # arrival order kept within a flow

    def in_flow_order(values: np.ndarray) -> np.ndarray:
        return values if by_flow is None else values[by_flow]

    flow_sorted = in_flow_order(segments.flow)
    seq = in_flow_order(segments.seq).astype(np.int64)
    firsts = _group_starts(flow_sorted)
    step = np.empty(n, np.int64)
    step[0:1] = 0
    step[1:] = (seq[1:] - seq[:-1] + _HALF) % _WRAP - _HALF
    step[firsts] = 0
    unwrapped = np.cumsum(step)
    group = np.repeat(np.arange(firsts.size), np.diff(np.append(firsts, n)))
    unwrapped -= unwrapped[firsts][group]
    syn = in_flow_order(segments.syn)
    data_at = unwrapped + syn                                # a SYN's data starts after it
    big = np.iinfo(np.int64).max
    has_data = in_flow_order(segments.captured) > 0
    lowest_data = np.minimum.reduceat(np.where(has_data, data_at, big), firsts) if n else data_at[:0]
    lowest_syn = np.minimum.reduceat(np.where(syn, unwrapped + 1, big), firsts) if n else data_at[:0]
    base = np.where(lowest_syn != big, lowest_syn, lowest_data)
    if by_flow is None:
        position = data_at - base[group]
    else:
        position = np.empty(n, np.int64)
        position[by_flow] = data_at - base[group]
    base_seq = np.zeros(flows, np.int64)
    base_seq[flow_sorted[firsts]] = (seq[firsts] + base) % _WRAP
    return position, base_seq


def reassemble(segments: Segments, flows: int) -> Streams:
    """Reassemble `flows` half-connections (flow ids 0..flows-1)."""
    n = len(segments)
    position, base_seq = stream_positions(segments, flows) if n else (np.zeros(0, np.int64),
                                                                      np.zeros(flows, np.int64))
    # Bytes before the stream start (old retransmissions) and bytes not captured are dropped.
    skip = np.maximum(-position, 0)
    size = np.maximum(segments.captured - skip, 0)
    before_start = int(np.minimum(skip, segments.captured).sum())
    useful = np.flatnonzero(size > 0)
    flow = segments.flow[useful]
    begin = position[useful] + skip[useful]
    size = size[useful]

    extent = np.zeros(flows, np.int64)
    np.maximum.at(extent, flow, begin + size)
    start = np.concatenate(([0], np.cumsum(extent + 1)[:-1])) if flows else np.zeros(0, np.int64)
    g_begin = start[flow] + begin

    # Sort by (position, arrival); arrival = segment index. Mostly sorted already.
    if useful.size and int((g_begin + size).max()) < (1 << 62) // max(n, 1):
        order = np.argsort(g_begin * n + useful, kind="stable")
    else:
        order = np.lexsort((useful, g_begin))
    s_seg = useful[order]
    s_begin = g_begin[order]
    s_end = s_begin + size[order]
    reach = np.maximum.accumulate(s_end) if s_end.size else s_end
    overlaps_before = np.zeros(s_begin.size, bool)
    overlaps_before[1:] = s_begin[1:] < reach[:-1]
    alone = ~overlaps_before
    alone[:-1] &= ~overlaps_before[1:]
    if alone.all():                                 # the usual case: no byte arrived twice
        piece_start, piece_end, piece_segment = s_begin, s_end, s_seg
    else:
        shared = np.flatnonzero(~alone)
        b, e, seg = _first_arrival_bytes(s_begin[shared], s_end[shared], s_seg[shared])
        piece_start = np.concatenate([s_begin[alone], b])
        piece_end = np.concatenate([s_end[alone], e])
        piece_segment = np.concatenate([s_seg[alone], seg])
        by_position = np.argsort(piece_start, kind="stable")
        piece_start, piece_end, piece_segment = (piece_start[by_position], piece_end[by_position],
                                                 piece_segment[by_position])

    contiguous = _contiguous(start, extent, piece_start, piece_end)
    piece_flow = segments.flow[piece_segment]
    usable = piece_end <= start[piece_flow] + contiguous[piece_flow]
    source = segments.where[piece_segment] + piece_start - start[piece_flow] - position[piece_segment]
    data, _ = gather_ragged(segments.payload, source[usable], (piece_end - piece_start)[usable])
    covered = int((piece_end - piece_start).sum())
    return Streams(data=data, data_start=np.cumsum(contiguous) - contiguous, start=start,
                   contiguous=contiguous, extent=extent, piece_start=piece_start, piece_end=piece_end,
                   piece_segment=piece_segment, position=position, base_seq=base_seq,
                   duplicate_bytes=int(size.sum()) - covered + before_start)


def _first_arrival_bytes(begin: np.ndarray, end: np.ndarray, segment: np.ndarray):
    """Overlapping segments, expanded to bytes: each byte to its earliest segment, as runs."""
    length = end - begin
    total = int(length.sum())
    position = np.repeat(begin - np.cumsum(length) + length, length) + np.arange(total)
    arrival = np.repeat(segment, length)
    order = np.lexsort((arrival, position))
    position, arrival = position[order], arrival[order]
    first = _group_starts(position)
    position, arrival = position[first], arrival[first]
    # runs: same segment, consecutive positions
    new_run = np.concatenate(([True], (arrival[1:] != arrival[:-1]) | (position[1:] != position[:-1] + 1)))
    heads = np.flatnonzero(new_run)
    tails = np.append(heads[1:], position.size) - 1
    return position[heads], position[tails] + 1, arrival[heads]


def _contiguous(start: np.ndarray, extent: np.ndarray, piece_start: np.ndarray, piece_end: np.ndarray) -> np.ndarray:
    """Per flow, bytes from the stream start up to the first position no piece covers."""
    first = np.searchsorted(piece_start, start)                  # each flow's pieces: [first, last)
    last = np.searchsorted(piece_start, start + extent)
    previous_end = np.concatenate(([-1], piece_end[:-1]))
    has_pieces = last > first
    previous_end[first[has_pieces]] = start[has_pieces]          # a flow's first piece must start at 0
    breaks = np.flatnonzero(piece_start > previous_end)
    first_break = breaks[np.minimum(np.searchsorted(breaks, first), max(breaks.size - 1, 0))] \
        if breaks.size else np.full(start.size, piece_start.size)
    broken = has_pieces & (first_break < last) & (first_break >= first)
    end = start.copy()
    whole = has_pieces & ~broken
    end[whole] = piece_end[last[whole] - 1]
    end[broken] = previous_end[first_break[broken]]
    return end - start

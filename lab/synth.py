"""A synthetic capture of one trading host, with every latency known (`lab synth`).

The host sits behind one tap ("host-tap"). Inbound, a market-data feed arrives
as UDP multicast datagrams (engine.protocol.md); a fraction of them trigger an
order, sent on a TCP connection to a venue gateway (any registered order protocol:
engine.protocol.registry); the gateway answers with acks, fills and rejects. The capture holds every
frame both ways: the handshake, MD, orders, responses, a few retransmissions and
out-of-order segments, and the closing FINs.

How the timeline is built (all integers, ns, seeded):

- **Wire time** of a frame of L captured bytes (no FCS) at the line rate:
  8 (preamble + SFD) + max(L + 4, 64) bytes, x8 bits / rate, rounded up to a
  whole ns. Frames in one direction never overlap: the next first bit is at
  least the previous first bit + the wire time of its bytes + the 12-byte gap.
- **MD** datagrams arrive at random gaps (bursts and lulls), with at least a
  frame's slot between them; they have the inbound wire first (the feed's
  priority) and are never delayed.
- **Orders.** The tick-to-trade latency is drawn per trigger (lognormal around
  8 us plus a rare tail); the engine is one thread, so an order never leaves
  before the one before it. Most orders are one segment. Some are sent as the
  decision-free prefix (the protocol's `prefix_bytes`) and, once decided, the
  rest: two segments, the prefix first. A few go as two segments swapped on the wire (out of order, as multi-queue NICs
  sometimes do), and a few are retransmitted spuriously a few ms later.
- **Venue.** Each order is answered after a one-way delay and processing: an
  ack, an ack + fill (one segment, or two, the fill later), or a reject. A few
  ack/fill pairs arrive swapped (out of order), a few responses are
  retransmitted, and the host answers those with a duplicate ack (and the venue
  answers the host's retransmissions likewise). Venue frames wait for gaps in
  the feed on the inbound wire.

Truth per trigger (independent of the timestamp convention):
`t_md_ns` the first bit of the MD frame at the tap; `order_first_bit_ns` the
first bit of the first frame on the wire that carries bytes of the order;
`order_last_byte_ns` when the whole order has been on the wire: the latest of
its segments' first bit + wire time (the order's last segment, for in-order
segments); `tick_to_trade_ns = order_first_bit_ns - t_md_ns`.

Timestamps in the file: `hardware` = every frame's first bit at the tap;
`software` = inbound frames at their last bit, outbound at their first bit (as
a host capture stamps them). Frames are written in stamp order.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.messages import BUY, SELL
from engine.protocol import md
from engine.protocol.registry import DEFAULT_ORDERS, order_protocol, order_protocol_names
from lab.capture import Interface, PacketBatch, PcapngWriter, PcapWriter
from lab.errors import LabError

CONVENTIONS = ("hardware", "software")
TRUTH_COLUMNS = ("md_seq", "t_md_ns", "order_first_bit_ns", "order_last_byte_ns", "tick_to_trade_ns")
INBOUND, OUTBOUND = 1, 2                       # pcapng epb_flags direction
NS_PER_S = 10**9

# --- the wire -------------------------------------------------------------------------------
PREAMBLE_BYTES, FCS_BYTES, MIN_FRAME_BYTES, GAP_BYTES = 8, 4, 64, 12
MIN_CAPTURED_FRAME = MIN_FRAME_BYTES - FCS_BYTES   # 60: frames are padded to this, FCS not captured


def wire_time_ns(frame_len, rate_bps: int):
    """ns from a frame's first bit to its last (preamble to FCS), rounded up."""
    wire_bytes = PREAMBLE_BYTES + np.maximum(np.asarray(frame_len, np.int64) + FCS_BYTES, MIN_FRAME_BYTES)
    return -(-(wire_bytes * 8 * NS_PER_S) // rate_bps)


def slot_ns(frame_len, rate_bps: int):
    """ns from a frame's first bit to the earliest first bit of the next frame (IFG included)."""
    wire_bytes = PREAMBLE_BYTES + np.maximum(np.asarray(frame_len, np.int64) + FCS_BYTES, MIN_FRAME_BYTES)
    return -(-((wire_bytes + GAP_BYTES) * 8 * NS_PER_S) // rate_bps)


# --- the hosts (198.18.0.0/15, the benchmarking range) ------------------------------------
def _ip(text: str) -> int:
    a, b, c, d = map(int, text.split("."))
    return a << 24 | b << 16 | c << 8 | d


HOST_IP, FEED_IP, MD_GROUP_IP, GATEWAY_IP = (_ip(a) for a in
                                             ("198.18.0.10", "198.18.1.1", "239.18.0.1", "198.19.0.1"))
HOST_MAC = bytes.fromhex("0200c612000a")
ROUTER_MAC = bytes.fromhex("0200c6120001")
MD_GROUP_MAC = bytes.fromhex("01005e") + (MD_GROUP_IP & 0x7FFFFF).to_bytes(3, "big")
MD_PORT, HOST_PORT, GATEWAY_PORT = 30001, 40001, 9000
TCP_SYN, TCP_ACK, TCP_PSH, TCP_FIN = 0x02, 0x10, 0x08, 0x01

# Ethernet II + IPv4 (no options) + UDP / TCP (no options), headers as data, network byte order.
_ETH_IPV4 = [("eth_dst", "V6"), ("eth_src", "V6"), ("eth_type", ">u2"),
             ("version_ihl", "u1"), ("tos", "u1"), ("ip_length", ">u2"), ("ip_id", ">u2"),
             ("fragment", ">u2"), ("ttl", "u1"), ("protocol", "u1"), ("ip_checksum", ">u2"),
             ("ip_src", ">u4"), ("ip_dst", ">u4")]
UDP_FRAME_HEADER = np.dtype(_ETH_IPV4 + [("sport", ">u2"), ("dport", ">u2"), ("udp_length", ">u2"),
                                         ("udp_checksum", ">u2")])
TCP_FRAME_HEADER = np.dtype(_ETH_IPV4 + [("sport", ">u2"), ("dport", ">u2"), ("seq", ">u4"), ("ack", ">u4"),
                                         ("offset_flags", ">u2"), ("window", ">u2"),
                                         ("tcp_checksum", ">u2"), ("urgent", ">u2")])
L3_OFFSET = 14
L4_OFFSET = L3_OFFSET + 20
UDP_CHECKSUM_AT = UDP_FRAME_HEADER.fields["udp_checksum"][1]
TCP_CHECKSUM_AT = TCP_FRAME_HEADER.fields["tcp_checksum"][1]
IP_CHECKSUM_AT = UDP_FRAME_HEADER.fields["ip_checksum"][1]

# Frame kinds in the frame table.
KIND_MD, KIND_HOST_TCP, KIND_VENUE_TCP = 0, 1, 2

# --- the model's parameters (ns unless named otherwise) ----------------------------------------
START_NS = 1_710_163_800 * NS_PER_S              # 2024-03-11 13:30:00 UTC, plus a seeded offset
TRIGGER_PROBABILITY = (0.2, 0.4)                 # drawn once per seed
MD_MEAN_GAP_NS = (3_000, 15_000)                 # drawn once per seed: the feed's mean gap
MD_BURST_FRACTION, MD_BURST_GAP_NS = 0.3, 400
LATENCY_FLOOR_NS, LATENCY_MEDIAN_NS, LATENCY_SIGMA = 5_500, 2_300, 0.45
LATENCY_TAIL_FRACTION, LATENCY_TAIL_MEAN_NS = 0.02, 15_000
DECISION_FLOOR_NS, DECISION_MEDIAN_NS = 400, 800  # after the prefix left, until the rest is ready
SPLIT_FRACTION, SWAPPED_FRACTION, RETRANSMIT_FRACTION = 0.10, 0.01, 0.005
ONE_WAY_NS = (1_500, 4_000)                      # host tap <-> gateway, drawn once per seed
VENUE_FLOOR_NS, VENUE_MEDIAN_NS = 3_000, 5_000
REJECT_FRACTION, FILL_FRACTION, FILL_LATER_FRACTION = 0.02, 0.30, 0.5
FILL_DELAY_NS = (1_000, 20_000)
RESPONSE_SWAPPED_FRACTION = 0.01
RTO_NS = (1_000_000, 5_000_000)                  # a tuned rto_min: spurious retransmissions
INSTRUMENTS = np.array([42, 43, 1001, 2002], np.uint32)
TICK = 1_000_000                                 # 0.01 in price ticks of 1e-8
CHUNK_FRAMES = 1 << 15
MAX_TRIGGERS = 10_000_000


@dataclass(frozen=True)
class SynthConfig:
    triggers: int
    seed: int = 0
    line_rate_bps: int = 10**10
    order_format: str = DEFAULT_ORDERS             # the order protocol's name

    def __post_init__(self):
        if not 1 <= self.triggers <= MAX_TRIGGERS:
            raise LabError(f"--triggers {self.triggers}: use 1 to {MAX_TRIGGERS} "
                           "(memory grows about 1.6 GB per million)")
        if self.order_format not in order_protocol_names():
            raise LabError(f"order format {self.order_format!r}: use one of {', '.join(order_protocol_names())}")
        if self.line_rate_bps <= 0:
            raise LabError("the line rate must be positive")


@dataclass
class Frames:
    """The frame table: one row per frame, in stamp order once finished."""

    first_ns: np.ndarray       # int64: first bit at the tap
    kind: np.ndarray           # uint8: KIND_*
    length: np.ndarray         # int64: payload bytes (MD datagram or TCP payload)
    ref: np.ndarray            # int64: MD index, or offset of the payload in its TCP stream
    seq: np.ndarray            # int64: TCP sequence number relative to the sender's ISN
    ack: np.ndarray            # int64: TCP ack number relative to the peer's ISN (-1: no ACK flag)
    flags: np.ndarray          # uint8: TCP flags

    @staticmethod
    def concat(parts: list[Frames]) -> Frames:
        return Frames(*(np.concatenate([getattr(p, name) for p in parts])
                        for name in Frames.__dataclass_fields__))

    def take(self, index) -> Frames:
        return Frames(*(getattr(self, name)[index] for name in Frames.__dataclass_fields__))

    @property
    def direction(self) -> np.ndarray:
        return np.where(self.kind == KIND_HOST_TCP, OUTBOUND, INBOUND).astype(np.int8)

    @property
    def frame_len(self) -> np.ndarray:
        header = np.where(self.kind == KIND_MD, UDP_FRAME_HEADER.itemsize, TCP_FRAME_HEADER.itemsize)
        return np.maximum(header + self.length, MIN_CAPTURED_FRAME)


def _tcp_frames(first_ns, kind, ref, length, seq, ack, flags) -> Frames:
    """TCP frames from columns (arrays, or one value for all)."""
    count = len(first_ns)

    def column(value, dtype):
        return np.broadcast_to(np.asarray(value, dtype), (count,)).copy()

    return Frames(column(first_ns, np.int64), column(kind, np.uint8), column(length, np.int64),
                  column(ref, np.int64), column(seq, np.int64), column(ack, np.int64),
                  column(flags, np.uint8))


@dataclass
class Synthesis:
    """A generated capture: its frames, the bytes they carry, and the truth."""

    config: SynthConfig
    frames: Frames
    md_columns: dict           # per MD datagram: seq, instrument, prices, ... (see _market_data)
    streams: np.ndarray        # uint8: the host -> gateway TCP byte stream, then gateway -> host
    host_stream_bytes: int     # where the gateway's stream starts in `streams`
    host_isn: int
    venue_isn: int
    truth: dict                # TRUTH_COLUMNS -> int64 arrays, one row per trigger
    counts: dict               # how many of each kind of event

    @property
    def host_stream(self) -> np.ndarray:
        return self.streams[:self.host_stream_bytes]

    @property
    def venue_stream(self) -> np.ndarray:
        return self.streams[self.host_stream_bytes:]

    def stamps(self, convention: str) -> np.ndarray:
        """Each frame's timestamp under a convention (see the module docstring)."""
        if convention not in CONVENTIONS:
            raise LabError(f"convention {convention!r}: use hardware or software")
        if convention == "hardware":
            return self.frames.first_ns
        inbound = self.frames.direction == INBOUND
        return self.frames.first_ns + inbound * wire_time_ns(self.frames.frame_len, self.config.line_rate_bps)


# --- scheduling on one direction of the wire ---------------------------------------------------
def fifo_starts(ready: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """First bits of frames sent in this order: start_i = max(ready_i, start_{i-1} + slot_{i-1}).

    The Lindley recursion in closed form: with C the exclusive cumulative slots,
    start = C + running max of (ready - C).
    """
    before = np.cumsum(slot) - slot
    return before + np.maximum.accumulate(ready - before)


def fill_gaps(ready: np.ndarray, slot: np.ndarray, busy_start: np.ndarray, busy_slot: np.ndarray) -> np.ndarray:
    """First bits of low-priority frames (in this order) that only use the gaps between
    fixed frames [busy_start, busy_start + busy_slot), FIFO among themselves."""
    start = fifo_starts(ready, slot)
    busy_end = busy_start + busy_slot
    for _ in range(10_000):
        last_busy = np.searchsorted(busy_start, start + slot, side="left") - 1
        end_of_clash = busy_end[np.maximum(last_busy, 0)]
        clash = (last_busy >= 0) & (end_of_clash > start)
        if not clash.any():
            return start
        start[clash] = end_of_clash[clash]
        start = fifo_starts(start, slot)
    raise LabError("the line rate is too low for this traffic: the inbound wire never goes idle")


def _lognormal(rng, count: int, floor: int, median: int, sigma: float) -> np.ndarray:
    return floor + np.round(rng.lognormal(np.log(median), sigma, count)).astype(np.int64)


# --- the generator -----------------------------------------------------------------------------
def synthesize(config: SynthConfig) -> Synthesis:
    rng = np.random.default_rng(config.seed)
    rate = config.line_rate_bps
    t0 = START_NS + int(rng.integers(0, 3600)) * NS_PER_S
    one_way = int(rng.integers(*ONE_WAY_NS))
    host_isn, venue_isn = (int(x) for x in rng.integers(0, 2**32, 2))

    md_cols, md_first, md_slot, trigger_md = _market_data(rng, config, t0)
    n = config.triggers
    order = _order_fields(rng, md_cols, trigger_md)
    protocol = order_protocol(config.order_format)
    order_size, prefix_bytes = protocol.new_order_bytes, protocol.prefix_bytes

    # Orders: decided at t_MD + latency.
    t_md = md_first[trigger_md]
    latency = _lognormal(rng, n, LATENCY_FLOOR_NS, LATENCY_MEDIAN_NS, LATENCY_SIGMA)
    tail = rng.random(n) < LATENCY_TAIL_FRACTION
    latency[tail] += np.round(rng.exponential(LATENCY_TAIL_MEAN_NS, int(tail.sum()))).astype(np.int64)
    decided = t_md + latency
    shuffled = rng.permutation(n)
    n_split, n_swapped = _count(n, SPLIT_FRACTION), _count(n, SWAPPED_FRACTION)
    split = np.sort(shuffled[:n_split])
    swapped = np.sort(shuffled[n_split:n_split + n_swapped])
    decision = _lognormal(rng, n, DECISION_FLOOR_NS, DECISION_MEDIAN_NS, 0.5)

    # Outbound data segments in send order. A split order is [prefix][rest], the rest once
    # decided; a swapped order is [second half][first half]; the others are one segment.
    two = np.zeros(n, bool)
    two[split] = two[swapped] = True
    seg_order = np.repeat(np.arange(n), np.where(two, 2, 1))
    second = np.zeros(seg_order.size, bool)
    second[1:] = seg_order[1:] == seg_order[:-1]
    is_split, is_swapped = np.isin(seg_order, split), np.isin(seg_order, swapped)
    half = order_size // 2
    seg_start = np.select([is_split & second, is_swapped & ~second], [prefix_bytes, half], 0)
    seg_len = np.select([is_split & ~second, is_split & second, is_swapped & ~second, is_swapped & second],
                        [prefix_bytes, order_size - prefix_bytes, order_size - half, half], order_size)
    seg_ready = decided[seg_order] + np.where(is_split & second, decision[seg_order], 0)
    seg_ready = np.maximum.accumulate(seg_ready)      # one engine thread: in order, never earlier
    retransmitted = _pick(rng, np.arange(n), RETRANSMIT_FRACTION)
    offset = seg_order * order_size + seg_start
    host_data = _tcp_frames(seg_ready, KIND_HOST_TCP, offset, seg_len, 1 + offset, 0, TCP_ACK | TCP_PSH)
    host_retx = _tcp_frames(decided[retransmitted] + rng.integers(*RTO_NS, size=retransmitted.size),
                            KIND_HOST_TCP, retransmitted * order_size, order_size,
                            1 + retransmitted * order_size, 0, TCP_ACK | TCP_PSH)
    outbound, where = _schedule([host_data, host_retx],
                                lambda f: fifo_starts(f.first_ns, slot_ns(f.frame_len, rate)))
    seg_first = outbound.first_ns[where[0]]
    seg_end = seg_first + wire_time_ns(host_data.frame_len, rate)
    groups = _group_starts(seg_order)
    order_first = np.minimum.reduceat(seg_first, groups)
    order_done = np.maximum.reduceat(seg_end, groups)
    retx_done = outbound.first_ns[where[1]] + wire_time_ns(host_retx.frame_len, rate)

    # The venue's frames share the inbound wire's gaps with the feed.
    venue_parts, venue_stream, response_counts = _venue(rng, config, order, order_done, retx_done, one_way)
    inbound, where = _schedule(venue_parts, lambda f: fill_gaps(f.first_ns, slot_ns(f.frame_len, rate),
                                                                  md_first, md_slot))
    # The host answers each venue retransmission with a duplicate ack, in the outbound gaps.
    resent_done = inbound.first_ns[where[1]] + wire_time_ns(inbound.frame_len[where[1]], rate)
    dup_ack = _tcp_frames(resent_done + 1_000, KIND_HOST_TCP, 0, 0, 0, 0, TCP_ACK)
    dup_ack.first_ns = fill_gaps(dup_ack.first_ns, slot_ns(dup_ack.frame_len, rate),
                                 outbound.first_ns, slot_ns(outbound.frame_len, rate))
    tcp = Frames.concat([outbound, dup_ack, inbound])
    _set_seq_and_acks(tcp, one_way, rate)

    # Handshake before the first MD datagram, FINs after the last frame: each control
    # frame leaves once the one it answers has fully arrived.
    host_len, venue_len = n * order_size, venue_stream.size
    slot = int(slot_ns(MIN_CAPTURED_FRAME, rate))
    syn_at = t0 - 3 * slot - 2 * one_way - 122_000
    syn_ack_at = syn_at + slot + 2 * one_way + 20_000
    fin_at = int(max((md_first + md_slot).max(), (tcp.first_ns + slot_ns(tcp.frame_len, rate)).max())) + 100_000
    fin_ack_at = fin_at + slot + 2 * one_way + 10_000
    control = Frames.concat([
        _tcp_frames([syn_at], KIND_HOST_TCP, 0, 0, 0, -1, TCP_SYN),
        _tcp_frames([syn_ack_at], KIND_VENUE_TCP, 0, 0, 0, 1, TCP_SYN | TCP_ACK),
        _tcp_frames([syn_ack_at + slot + 2_000], KIND_HOST_TCP, 0, 0, 1, 1, TCP_ACK),
        _tcp_frames([fin_at], KIND_HOST_TCP, 0, 0, 1 + host_len, 1 + venue_len, TCP_FIN | TCP_ACK),
        _tcp_frames([fin_ack_at], KIND_VENUE_TCP, 0, 0, 1 + venue_len, 2 + host_len, TCP_FIN | TCP_ACK),
        _tcp_frames([fin_ack_at + slot + 2_000], KIND_HOST_TCP, 0, 0, 2 + host_len, 2 + venue_len, TCP_ACK),
    ])
    md_frames = Frames(md_first, np.full(md_first.size, KIND_MD, np.uint8), md_cols["length"],
                       np.arange(md_first.size, dtype=np.int64), np.zeros(md_first.size, np.int64),
                       np.full(md_first.size, -1, np.int64), np.zeros(md_first.size, np.uint8))

    host_stream = protocol.synth_orders(order, decided, order_first)
    truth = {
        "md_seq": md_cols["seq"][trigger_md].astype(np.int64),
        "t_md_ns": t_md,
        "order_first_bit_ns": order_first,
        "order_last_byte_ns": order_done,
        "tick_to_trade_ns": order_first - t_md,
    }
    counts = {"md_datagrams": int(md_first.size), "triggers": n, "split_orders": int(split.size),
              "swapped_orders": int(swapped.size), "retransmitted_orders": int(retransmitted.size),
              **response_counts}
    return Synthesis(config, Frames.concat([md_frames, tcp, control]), md_cols,
                     np.concatenate([host_stream, venue_stream]), host_stream.size,
                     host_isn, venue_isn, truth, counts)


def _count(population: int, fraction: float) -> int:
    """About `fraction` of the population; at least one once the population has 20."""
    count = round(population * fraction)
    return min(max(count, 1) if population >= 20 else count, population)


def _pick(rng, population: np.ndarray, fraction: float) -> np.ndarray:
    """A sorted random subset of about `fraction` of `population`."""
    return np.sort(rng.choice(population, size=_count(population.size, fraction), replace=False))


def _schedule(parts: list[Frames], place) -> tuple[Frames, list[np.ndarray]]:
    """Put the frames of all parts in order of readiness, place them on the wire with
    `place`, and say where each part's rows went."""
    frames = Frames.concat(parts)
    by_ready = np.argsort(frames.first_ns, kind="stable")
    frames = frames.take(by_ready)
    frames.first_ns = place(frames)
    row_of = np.empty_like(by_ready)
    row_of[by_ready] = np.arange(by_ready.size)
    bounds = np.cumsum([0] + [p.first_ns.size for p in parts])
    return frames, [row_of[a:b] for a, b in itertools.pairwise(bounds)]


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))


def _market_data(rng, config: SynthConfig, t0: int):
    """MD datagrams: their content columns, first bits and slots, and which trigger."""
    rate = config.line_rate_bps
    per_trigger = rng.geometric(rng.uniform(*TRIGGER_PROBABILITY), config.triggers)
    trigger_md = np.cumsum(per_trigger) - 1
    count = int(trigger_md[-1]) + 1
    n_updates = 2 + rng.choice(4, count, p=[0.4, 0.3, 0.2, 0.1])
    n_trades = (rng.random(count) < 0.15).astype(np.int64)
    length = md.md_length(n_updates, n_trades).astype(np.int64)
    slot = slot_ns(UDP_FRAME_HEADER.itemsize + length, rate)
    # The feed keeps the wire at most half busy, whatever the line rate.
    mean_gap = max(rng.uniform(*MD_MEAN_GAP_NS), 2 * float(slot.max()))
    burst = rng.random(count) < MD_BURST_FRACTION
    idle = np.round(np.where(burst, rng.exponential(MD_BURST_GAP_NS, count),
                             rng.exponential(mean_gap, count))).astype(np.int64)
    gaps = np.concatenate([[0], slot[:-1]]) + idle
    gaps[0] = 0
    first = t0 + np.cumsum(gaps)
    mid = (100 * 10**8 + TICK * np.cumsum(rng.integers(-1, 2, count))).astype(np.int64)
    instrument = rng.choice(INSTRUMENTS, count)
    bid = mid + (instrument.astype(np.int64) % 7) * 100 * TICK
    columns = {
        "length": length, "n_updates": n_updates, "n_trades": n_trades,
        "seq": int(rng.integers(1, 10**6)) + np.arange(count, dtype=np.uint64),
        "venue": np.full(count, 3, np.uint16), "instrument": instrument,
        "send_ts_ns": first - rng.integers(20_000, 60_000, count),
        "bid": bid, "ask": bid + TICK * (1 + (rng.random(count) < 0.2)),
        "qty": rng.integers(1, 50, (count, 6)) * 100,    # best bid, best ask, 3 deeper levels, trade
        "aggressor": rng.integers(md.BID, md.ASK + 1, count).astype(np.uint8),
    }
    return columns, first, slot, trigger_md


def _venue(rng, config: SynthConfig, order: dict, order_done, retx_done, one_way: int):
    """The gateway's frames, ready at the tap (before they share the wire), as
    [responses, retransmitted responses, duplicate acks], and its byte stream."""
    n = order_done.size
    arrived = order_done + one_way
    ready = np.maximum.accumulate(arrived + _lognormal(rng, n, VENUE_FLOOR_NS, VENUE_MEDIAN_NS, 0.4)) + one_way
    outcome = rng.random(n)
    rejected = outcome < REJECT_FRACTION
    filled = ~rejected & (outcome < REJECT_FRACTION + FILL_FRACTION)
    fill_later = filled & (rng.random(n) < FILL_LATER_FRACTION)
    swapped = _pick(rng, np.flatnonzero(fill_later), RESPONSE_SWAPPED_FRACTION / FILL_LATER_FRACTION)

    # Per order: [reject] or [ack] or [ack][fill], back to back in the stream. The venue's
    # clock (venue_ts) is content only, not used for timing.
    stream, first_len, fill_len = order_protocol(config.order_format).synth_replies(
        dict(order, exec_id=9_000_000 + np.arange(n)), rejected, filled, START_NS + np.arange(n))
    response_len = first_len + fill_len
    response_at = np.cumsum(response_len) - response_len

    # Segments in send order: one per response, or [ack][fill] when the fill comes later;
    # a swapped pair puts the fill on the wire first.
    seg_order = np.repeat(np.arange(n), np.where(fill_later, 2, 1))
    second = np.zeros(seg_order.size, bool)
    second[1:] = seg_order[1:] == seg_order[:-1]
    is_two = fill_later[seg_order]
    is_swapped = np.isin(seg_order, swapped)
    fill_part = is_two & (second ^ is_swapped)
    seg_start = response_at[seg_order] + np.where(fill_part, first_len[seg_order], 0)
    seg_len = np.where(is_two, np.where(fill_part, fill_len[seg_order], first_len[seg_order]),
                       response_len[seg_order])
    fill_delay = rng.integers(*FILL_DELAY_NS, size=n)
    seg_ready = ready[seg_order] + np.where(is_two & second & ~is_swapped, fill_delay[seg_order], 0)
    seg_ready = np.maximum.accumulate(seg_ready)
    segments = _tcp_frames(seg_ready, KIND_VENUE_TCP, seg_start, seg_len, 1 + seg_start, 0,
                           TCP_ACK | TCP_PSH)
    resent = segments.take(_pick(rng, np.arange(seg_order.size), RETRANSMIT_FRACTION))
    resent.first_ns = resent.first_ns + rng.integers(*RTO_NS, size=resent.first_ns.size)
    dup_ack = _tcp_frames(retx_done + 2 * one_way + 1_000, KIND_VENUE_TCP, 0, 0, 0, 0, TCP_ACK)
    counts = {"responses": n, "rejects": int(rejected.sum()), "fills": int(filled.sum()),
              "swapped_responses": int(swapped.size), "retransmitted_responses": int(resent.first_ns.size)}
    return [segments, resent, dup_ack], stream, counts


def _first_copies(frames: Frames, sender_kind: int) -> Frames:
    """The sender's data segments in sequence order, without retransmitted copies."""
    data = frames.take(np.flatnonzero((frames.kind == sender_kind) & (frames.length > 0)))
    data = data.take(np.lexsort((data.first_ns, data.seq)))
    first = np.concatenate([[True], data.seq[1:] != data.seq[:-1]])
    return data.take(np.flatnonzero(first))


def _received_bytes(frames: Frames, sender_kind: int, at_ns: np.ndarray, delay_ns: int, rate: int):
    """Bytes of the sender's stream received in order `delay_ns` after the tap, by each `at_ns`."""
    data = _first_copies(frames, sender_kind)
    whole_at = np.maximum.accumulate(data.first_ns + wire_time_ns(data.frame_len, rate) + delay_ns)
    count = np.searchsorted(whole_at, at_ns, side="right")
    return np.where(count > 0, (data.seq - 1 + data.length)[np.maximum(count - 1, 0)], 0)


def _sent_bytes(frames: Frames, sender_kind: int, at_ns: np.ndarray):
    """Bytes of the sender's stream put on the wire before each `at_ns` (its next seq - 1)."""
    data = _first_copies(frames, sender_kind)
    data = data.take(np.argsort(data.first_ns, kind="stable"))
    count = np.searchsorted(data.first_ns, at_ns, side="left")
    sent = np.maximum.accumulate(data.seq - 1 + data.length)
    return np.where(count > 0, sent[np.maximum(count - 1, 0)], 0)


def _set_seq_and_acks(frames: Frames, one_way: int, rate: int) -> None:
    """Ack numbers (what each side has received in order when a frame leaves its sender)
    and the seq of pure acks (what the sender has sent so far)."""
    for kind, peer, leaves, delay in ((KIND_HOST_TCP, KIND_VENUE_TCP, 0, 0),
                                      (KIND_VENUE_TCP, KIND_HOST_TCP, -one_way, one_way)):
        mine = frames.kind == kind
        frames.ack[mine] = 1 + _received_bytes(frames, peer, frames.first_ns[mine] + leaves, delay, rate)
        pure = mine & (frames.length == 0)
        frames.seq[pure] = 1 + _sent_bytes(frames, kind, frames.first_ns[pure])


def _order_fields(rng, md_cols: dict, trigger_md: np.ndarray) -> dict:
    """What each order says: it takes the triggering datagram's best price."""
    n = trigger_md.size
    side = rng.integers(BUY, SELL + 1, n)
    return {"side": side, "qty": rng.integers(1, 10, n) * 100,
            "price": np.where(side == BUY, md_cols["ask"][trigger_md], md_cols["bid"][trigger_md]),
            "instrument": md_cols["instrument"][trigger_md], "trigger_seq": md_cols["seq"][trigger_md],
            "client_order_id": 500_000 + np.arange(n), "venue_order_id": 7_000_000 + np.arange(n), "account": 7}


# --- frames to bytes ---------------------------------------------------------------------------
def finish(synthesis: Synthesis, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """Stamps under `convention`, and the frame order to write them in (by stamp)."""
    stamps = synthesis.stamps(convention)
    order = np.lexsort((synthesis.frames.first_ns, stamps))
    return stamps, order


def build_frames(synthesis: Synthesis, rows: np.ndarray, ip_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of frames `rows` (back to back) and their lengths: headers from
    templates patched with numpy, payloads gathered, checksums computed per row."""
    f = synthesis.frames.take(rows)
    frame_len = f.frame_len
    width = int(frame_len.max()) + 1 & ~1
    out = np.zeros((rows.size, width), np.uint8)
    is_md = f.kind == KIND_MD
    md_rows, tcp_rows = np.flatnonzero(is_md), np.flatnonzero(~is_md)
    _put_udp(out, md_rows, f, ip_id[is_md], synthesis)
    _put_tcp(out, tcp_rows, f, ip_id[~is_md], synthesis)
    _put_checksums(out, is_md, f)
    keep = np.arange(width, dtype=np.uint16) < frame_len.astype(np.uint16)[:, None]
    return out[keep], frame_len


def _header_rows(dtype: np.dtype, count: int) -> np.ndarray:
    rows = np.zeros(count, dtype)
    rows["eth_type"], rows["version_ihl"] = 0x0800, 0x45
    return rows


def _put_udp(out: np.ndarray, rows: np.ndarray, f: Frames, ip_id: np.ndarray, synthesis: Synthesis) -> None:
    length = f.length[rows]
    header = _header_rows(UDP_FRAME_HEADER, rows.size)
    header["eth_dst"], header["eth_src"] = np.void(MD_GROUP_MAC), np.void(ROUTER_MAC)
    header["ip_length"], header["ip_id"], header["ttl"], header["protocol"] = 28 + length, ip_id, 60, 17
    header["ip_src"], header["ip_dst"] = FEED_IP, MD_GROUP_IP
    header["sport"], header["dport"], header["udp_length"] = MD_PORT, MD_PORT, 8 + length
    out[rows, :UDP_FRAME_HEADER.itemsize] = header.view(np.uint8).reshape(rows.size, -1)
    cols = synthesis.md_columns
    index = f.ref[rows]
    shapes = cols["n_updates"][index] * 16 + cols["n_trades"][index]
    for shape in np.unique(shapes):
        mine = np.flatnonzero(shapes == shape)
        out[rows[mine], UDP_FRAME_HEADER.itemsize:UDP_FRAME_HEADER.itemsize + int(length[mine[0]])] = \
            _md_payloads(cols, index[mine], int(shape) // 16, int(shape) % 16)


def _md_payloads(cols: dict, index: np.ndarray, n_updates: int, n_trades: int) -> np.ndarray:
    records = np.zeros(index.size, md.datagram_dtype(n_updates, n_trades))
    header = records["header"]
    header["magic"], header["version"], header["msg_type"] = md.MAGIC, md.VERSION, md.MSG_TYPE_MD
    header["length"], header["n_updates"], header["n_trades"] = md.md_length(n_updates, n_trades), n_updates, n_trades
    for name in ("venue", "seq", "instrument", "send_ts_ns"):
        header[name] = cols[name][index]
    updates, qty = records["updates"], cols["qty"][index]
    bid, ask = cols["bid"][index], cols["ask"][index]
    updates["action"] = md.SET
    updates["side"][:, 0], updates["price"][:, 0], updates["qty"][:, 0] = md.BID, bid, qty[:, 0]
    updates["side"][:, 1], updates["price"][:, 1], updates["qty"][:, 1] = md.ASK, ask, qty[:, 1]
    for level in range(2, n_updates):                 # deeper levels, alternating sides
        on_bid = level % 2 == 0
        updates["side"][:, level] = md.BID if on_bid else md.ASK
        updates["price"][:, level] = bid - level // 2 * TICK if on_bid else ask + level // 2 * TICK
        updates["qty"][:, level] = qty[:, level]
    if n_trades:
        trades = records["trades"]
        aggressor = cols["aggressor"][index]
        trades["price"][:, 0] = np.where(aggressor == md.BID, ask, bid)
        trades["qty"][:, 0], trades["aggressor"][:, 0] = qty[:, 5], aggressor
    return records.view(np.uint8).reshape(index.size, -1)


def _put_tcp(out: np.ndarray, rows: np.ndarray, f: Frames, ip_id: np.ndarray, synthesis: Synthesis) -> None:
    from_host = f.kind[rows] == KIND_HOST_TCP
    length, flags = f.length[rows], f.flags[rows]
    header = _header_rows(TCP_FRAME_HEADER, rows.size)
    host_mac, router_mac = np.void(HOST_MAC), np.void(ROUTER_MAC)
    header["eth_dst"] = np.where(from_host, router_mac, host_mac)
    header["eth_src"] = np.where(from_host, host_mac, router_mac)
    header["ip_length"], header["ip_id"], header["fragment"] = 40 + length, ip_id, 0x4000
    header["ttl"], header["protocol"] = np.where(from_host, 64, 61), 6
    header["ip_src"] = np.where(from_host, HOST_IP, GATEWAY_IP)
    header["ip_dst"] = np.where(from_host, GATEWAY_IP, HOST_IP)
    header["sport"] = np.where(from_host, HOST_PORT, GATEWAY_PORT)
    header["dport"] = np.where(from_host, GATEWAY_PORT, HOST_PORT)
    own_isn = np.where(from_host, synthesis.host_isn, synthesis.venue_isn)
    peer_isn = np.where(from_host, synthesis.venue_isn, synthesis.host_isn)
    ack = f.ack[rows]
    header["seq"] = (own_isn + f.seq[rows]) % 2**32
    header["ack"] = np.where(ack >= 0, (peer_isn + ack) % 2**32, 0)
    header["offset_flags"] = 5 << 12 | flags.astype(np.uint16)
    header["window"] = np.where(from_host, 64_240, 65_535)
    out[rows, :TCP_FRAME_HEADER.itemsize] = header.view(np.uint8).reshape(rows.size, -1)
    carrying = np.flatnonzero(length > 0)
    if carrying.size:
        size = length[carrying]
        source = f.ref[rows[carrying]] + np.where(from_host[carrying], 0, synthesis.host_stream_bytes)
        within = np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
        target = np.repeat(rows[carrying] * out.shape[1] + TCP_FRAME_HEADER.itemsize, size) + within
        out.reshape(-1)[target] = synthesis.streams[np.repeat(source, size) + within]


def _put_checksums(out: np.ndarray, is_md: np.ndarray, f: Frames) -> None:
    """IPv4 header checksums, then UDP/TCP checksums over the pseudo-header, header and payload.

    Rows are zero past each frame's end (Ethernet padding is zero too), so the sum of a
    row's 16-bit words from the L4 header on is exactly the L4 sum. Words are summed
    little-endian (faster); the ones' complement sum is then byte-swapped (RFC 1071),
    so each checksum is stored low byte first to land in network order.
    """
    def complement(total):
        for _ in range(2):
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF

    def store(rows, at, checksum):
        out[rows, at], out[rows, at + 1] = checksum & 0xFF, checksum >> 8

    words = out.view("<u2")                          # rows have an even width
    everything = np.arange(out.shape[0])
    store(everything, IP_CHECKSUM_AT, complement(words[:, L3_OFFSET // 2:L4_OFFSET // 2].sum(axis=1, dtype=np.uint32)))
    addresses = words[:, (L3_OFFSET + 12) // 2:L4_OFFSET // 2].sum(axis=1, dtype=np.uint32)
    l4_len = (np.where(is_md, 8, 20) + f.length).astype(np.uint32)
    pseudo = addresses + (np.where(is_md, 17, 6).astype(np.uint32) << 8) + (l4_len >> 8) + ((l4_len & 0xFF) << 8)
    checksum = complement(words[:, L4_OFFSET // 2:].sum(axis=1, dtype=np.uint32) + pseudo)
    md_rows, tcp_rows = np.flatnonzero(is_md), np.flatnonzero(~is_md)
    store(md_rows, UDP_CHECKSUM_AT, np.where(checksum[md_rows] == 0, 0xFFFF, checksum[md_rows]))  # UDP: 0 is sent as ffff
    store(tcp_rows, TCP_CHECKSUM_AT, checksum[tcp_rows])


def _ip_ids(frames: Frames, order: np.ndarray) -> np.ndarray:
    """IPv4 ids, counting up per sender in the order the frames are written."""
    kind = frames.kind[order]
    ids = np.empty(order.size, np.int64)
    for value in (KIND_MD, KIND_HOST_TCP, KIND_VENUE_TCP):
        mine = kind == value
        ids[mine] = (1_000 * (value + 1) + np.arange(int(mine.sum()))) % 2**16
    return ids


# --- files ---------------------------------------------------------------------------------------
def describe_convention(convention: str, rate_bps: int) -> str:
    if convention == "hardware":
        return ("wirelab synth host tap; hardware-style timestamps: every frame's first bit at the tap")
    return ("wirelab synth host tap; software-style timestamps: inbound frames at their last bit, "
            f"outbound at their first bit (line rate {rate_bps} b/s)")


def write_capture(synthesis: Synthesis, path: str, file_format: str, convention: str,
                  progress: Callable[[int], None] | None = None) -> dict:
    """Write the capture; returns what was written (frames, bytes, first and last stamps)."""
    stamps, order = finish(synthesis, convention)
    ip_id = _ip_ids(synthesis.frames, order)
    rate = synthesis.config.line_rate_bps
    direction = synthesis.frames.direction
    if file_format == "pcap":
        writer = PcapWriter(path)
    elif file_format == "pcapng":
        writer = PcapngWriter(path, [Interface(linktype=1, tsresol="1e-9", snaplen=262144, name="host-tap",
                                               description=describe_convention(convention, rate))])
    else:
        raise LabError(f"format {file_format!r}: use pcap or pcapng")
    with writer:
        for start in range(0, order.size, CHUNK_FRAMES):
            rows = order[start:start + CHUNK_FRAMES]
            data, frame_len = build_frames(synthesis, rows, ip_id[start:start + CHUNK_FRAMES])
            count = rows.size
            batch = PacketBatch(data=data, offset=np.cumsum(frame_len) - frame_len,
                                caplen=frame_len.astype(np.uint32), wire_len=frame_len.astype(np.uint32),
                                ts_ns=stamps[rows], interface=np.zeros(count, np.uint16),
                                direction=direction[rows])
            if file_format == "pcap":
                writer.write_batch(stamps[rows], batch)
            else:
                writer.write_batch(0, stamps[rows], batch, direction[rows])
            if progress:
                progress(count)
    return {"frames": int(order.size), "file_bytes": os.path.getsize(path),
            "first_ts_ns": int(stamps[order[0]]), "last_ts_ns": int(stamps[order[-1]])}


def write_truth(synthesis: Synthesis, path: str) -> None:
    """The truth CSV (TRUTH_COLUMNS, one row per trigger), owner-only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write((",".join(TRUTH_COLUMNS) + "\n").encode())
        columns = [synthesis.truth[name] for name in TRUTH_COLUMNS]
        for start in range(0, synthesis.config.triggers, 1 << 16):
            out.write(csv_rows([c[start:start + (1 << 16)] for c in columns]))


_DIGITS = 19                                       # int64 values >= 0 have at most 19 digits
_FOUR_DIGITS = np.frombuffer(b"".join(b"%04d" % i for i in range(10_000)), np.uint32)


def csv_rows(columns: list[np.ndarray]) -> bytes:
    """Rows of non-negative int64 columns as CSV text, formatted with numpy (no loop over rows)."""
    count = columns[0].size
    field = _DIGITS + 1                            # digits, then ',' or newline
    text = np.zeros((count, len(columns) * field), np.uint8)
    keep = np.zeros(text.shape, bool)
    for i, column in enumerate(columns):
        if (column < 0).any():
            raise ValueError("csv_rows writes non-negative integers only")
        groups = np.empty((count, 5), np.uint32)     # 20 digits, 4 at a time
        rest = column.astype(np.int64)
        for group in range(4, -1, -1):
            rest, four = np.divmod(rest, 10_000)
            groups[:, group] = _FOUR_DIGITS[four]
        text[:, i * field:i * field + _DIGITS] = groups.view(np.uint8).reshape(count, 20)[:, 1:]
        text[:, i * field + _DIGITS] = ord(",") if i < len(columns) - 1 else ord("\n")
        width = 1 + (column[:, None] >= 10 ** np.arange(1, _DIGITS, dtype=np.int64)).sum(axis=1)
        keep[:, i * field:(i + 1) * field] = np.arange(field) >= _DIGITS - width[:, None]
    return text[keep].tobytes()

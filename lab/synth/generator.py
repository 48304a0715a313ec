"""The synth's timeline: the market, the host's orders (decided at t_MD + a drawn latency, some
split into prefix and rest, some swapped or retransmitted), the venue's answers, the handshake
and the FINs, all placed on the two directions of the tap's wire, and the truth per trigger."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.protocol.registry import (DEFAULT_MD, DEFAULT_ORDERS, md_protocol_names, order_protocol,
                                      order_protocol_names)
from lab.capture.frames import MIN_CAPTURED_FRAME, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN
from lab.capture.records import INBOUND
from lab.errors import LabError
from lab.synth.draws import count, lognormal, pick
from lab.synth.market import market_data, order_fields
from lab.synth.tcp import (KIND_HOST_TCP, KIND_MD, KIND_VENUE_TCP, RETRANSMIT_FRACTION, RTO_NS, Frames,
                           fifo_starts, fill_gaps, schedule, session_frames, set_seq_and_acks, tcp_frames,
                           venue_responses)
from simulator.framing import ethernet_slot_ns, ethernet_wire_ns

CONVENTIONS = ("hardware", "software")
TRUTH_COLUMNS = ("md_seq", "t_md_ns", "order_first_bit_ns", "order_last_byte_ns", "tick_to_trade_ns")
NS_PER_S = 10**9
START_NS = 1_710_163_800 * NS_PER_S              # 2024-03-11 13:30:00 UTC, plus a seeded offset
LATENCY_FLOOR_NS, LATENCY_MEDIAN_NS, LATENCY_SIGMA = 5_500, 2_300, 0.45
LATENCY_TAIL_FRACTION, LATENCY_TAIL_MEAN_NS = 0.02, 15_000
DECISION_FLOOR_NS, DECISION_MEDIAN_NS = 400, 800  # after the prefix left, until the rest is ready
SPLIT_FRACTION, SWAPPED_FRACTION = 0.10, 0.01
ONE_WAY_NS = (1_500, 4_000)                      # host tap <-> gateway, drawn once per seed
MAX_TRIGGERS = 10_000_000


@dataclass(frozen=True)
class SynthConfig:
    triggers: int
    seed: int = 0
    line_rate_bps: int = 10**10
    order_format: str = DEFAULT_ORDERS             # the order protocol's name
    md_format: str = DEFAULT_MD                    # the market-data protocol's name

    def __post_init__(self):
        if not 1 <= self.triggers <= MAX_TRIGGERS:
            raise LabError(f"--triggers {self.triggers}: use 1 to {MAX_TRIGGERS} "
                           "(memory grows about 1.6 GB per million)")
        if self.order_format not in order_protocol_names():
            raise LabError(f"order format {self.order_format!r}: use one of {', '.join(order_protocol_names())}")
        if self.md_format not in md_protocol_names():
            raise LabError(f"market-data format {self.md_format!r}: use one of {', '.join(md_protocol_names())}")
        if self.line_rate_bps <= 0:
            raise LabError("the line rate must be positive")


@dataclass
class Synthesis:
    """A generated capture: its frames, the bytes they carry, and the truth."""

    config: SynthConfig
    frames: Frames
    md_columns: dict           # per MD datagram: seq, instrument, prices, ... (see lab.synth.market)
    streams: np.ndarray        # uint8: the host -> gateway TCP byte stream, then gateway -> host
    host_stream_bytes: int     # where the gateway's stream starts in `streams`
    host_isn: int
    venue_isn: int
    truth: dict                # TRUTH_COLUMNS -> int64 arrays, one row per trigger
    counts: dict               # how many of each kind of event
    order_ids: np.ndarray      # int64: each trigger's order's client order id (its token, for OUCH)

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
        return self.frames.first_ns + inbound * ethernet_wire_ns(self.frames.frame_len, self.config.line_rate_bps)


def synthesize(config: SynthConfig) -> Synthesis:
    rng = np.random.default_rng(config.seed)
    rate = config.line_rate_bps
    t0 = START_NS + int(rng.integers(0, 3600)) * NS_PER_S
    one_way = int(rng.integers(*ONE_WAY_NS))
    host_isn, venue_isn = (int(x) for x in rng.integers(0, 2**32, 2))

    md_cols, md_first, md_slot, trigger_md = market_data(rng, config, t0)
    n = config.triggers
    order = order_fields(rng, md_cols, trigger_md)
    protocol = order_protocol(config.order_format)
    order_size, prefix_bytes = protocol.new_order_bytes, protocol.prefix_bytes
    host_open, venue_open, host_close, venue_close = protocol.synth_session()

    # Orders: decided at t_MD + latency.
    t_md = md_first[trigger_md]
    latency = lognormal(rng, n, LATENCY_FLOOR_NS, LATENCY_MEDIAN_NS, LATENCY_SIGMA)
    tail = rng.random(n) < LATENCY_TAIL_FRACTION
    latency[tail] += np.round(rng.exponential(LATENCY_TAIL_MEAN_NS, int(tail.sum()))).astype(np.int64)
    decided = t_md + latency
    shuffled = rng.permutation(n)
    n_split, n_swapped = count(n, SPLIT_FRACTION), count(n, SWAPPED_FRACTION)
    split = np.sort(shuffled[:n_split])
    swapped = np.sort(shuffled[n_split:n_split + n_swapped])
    decision = lognormal(rng, n, DECISION_FLOOR_NS, DECISION_MEDIAN_NS, 0.5)

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
    retransmitted = pick(rng, np.arange(n), RETRANSMIT_FRACTION)
    offset = len(host_open) + seg_order * order_size + seg_start
    host_data = tcp_frames(seg_ready, KIND_HOST_TCP, offset, seg_len, 1 + offset, 0, TCP_ACK | TCP_PSH)
    host_retx = tcp_frames(decided[retransmitted] + rng.integers(*RTO_NS, size=retransmitted.size),
                            KIND_HOST_TCP, len(host_open) + retransmitted * order_size, order_size,
                            1 + len(host_open) + retransmitted * order_size, 0, TCP_ACK | TCP_PSH)
    outbound, where = schedule([host_data, host_retx],
                                lambda f: fifo_starts(f.first_ns, ethernet_slot_ns(f.frame_len, rate)))
    seg_first = outbound.first_ns[where[0]]
    seg_end = seg_first + ethernet_wire_ns(host_data.frame_len, rate)
    groups = _group_starts(seg_order)
    order_first = np.minimum.reduceat(seg_first, groups)
    order_done = np.maximum.reduceat(seg_end, groups)
    retx_done = outbound.first_ns[where[1]] + ethernet_wire_ns(host_retx.frame_len, rate)

    # The venue's frames share the inbound wire's gaps with the feed.
    venue_parts, venue_stream, response_counts = venue_responses(rng, config, order, order_done, retx_done, one_way,
                                                                 START_NS, len(venue_open))
    inbound, where = schedule(venue_parts, lambda f: fill_gaps(f.first_ns, ethernet_slot_ns(f.frame_len, rate),
                                                                  md_first, md_slot))
    # The host answers each venue retransmission with a duplicate ack, in the outbound gaps.
    resent_done = inbound.first_ns[where[1]] + ethernet_wire_ns(inbound.frame_len[where[1]], rate)
    dup_ack = tcp_frames(resent_done + 1_000, KIND_HOST_TCP, 0, 0, 0, 0, TCP_ACK)
    dup_ack.first_ns = fill_gaps(dup_ack.first_ns, ethernet_slot_ns(dup_ack.frame_len, rate),
                                 outbound.first_ns, ethernet_slot_ns(outbound.frame_len, rate))
    tcp = Frames.concat([outbound, dup_ack, inbound])

    # Handshake before the first MD datagram, FINs after the last frame: each control
    # frame leaves once the one it answers has fully arrived. A session's opening (a login
    # and its answer) follows the handshake; its closing comes after the last order.
    host_stream = np.concatenate([np.frombuffer(host_open, np.uint8), protocol.synth_orders(order, decided, order_first),
                                  np.frombuffer(host_close, np.uint8)])
    venue_stream = np.concatenate([np.frombuffer(venue_open, np.uint8), venue_stream,
                                   np.frombuffer(venue_close, np.uint8)])
    host_len, venue_len = host_stream.size, venue_stream.size
    slot = int(ethernet_slot_ns(MIN_CAPTURED_FRAME, rate))
    syn_at = t0 - 3 * slot - 2 * one_way - 122_000
    syn_ack_at = syn_at + slot + 2 * one_way + 20_000
    tcp = Frames.concat([tcp, *session_frames(host_open, venue_open, host_close, venue_close, host_len, venue_len,
                                              syn_ack_at + slot + 4_000, one_way, rate, tcp, md_first, md_slot)])
    set_seq_and_acks(tcp, one_way, rate)
    fin_at = int(max((md_first + md_slot).max(), (tcp.first_ns + ethernet_slot_ns(tcp.frame_len, rate)).max())) + 100_000
    fin_ack_at = fin_at + slot + 2 * one_way + 10_000
    control = Frames.concat([
        tcp_frames([syn_at], KIND_HOST_TCP, 0, 0, 0, -1, TCP_SYN),
        tcp_frames([syn_ack_at], KIND_VENUE_TCP, 0, 0, 0, 1, TCP_SYN | TCP_ACK),
        tcp_frames([syn_ack_at + slot + 2_000], KIND_HOST_TCP, 0, 0, 1, 1, TCP_ACK),
        tcp_frames([fin_at], KIND_HOST_TCP, 0, 0, 1 + host_len, 1 + venue_len, TCP_FIN | TCP_ACK),
        tcp_frames([fin_ack_at], KIND_VENUE_TCP, 0, 0, 1 + venue_len, 2 + host_len, TCP_FIN | TCP_ACK),
        tcp_frames([fin_ack_at + slot + 2_000], KIND_HOST_TCP, 0, 0, 2 + host_len, 2 + venue_len, TCP_ACK),
    ])
    md_frames = Frames(md_first, np.full(md_first.size, KIND_MD, np.uint8), md_cols["length"],
                       np.arange(md_first.size, dtype=np.int64), np.zeros(md_first.size, np.int64),
                       np.full(md_first.size, -1, np.int64), np.zeros(md_first.size, np.uint8))

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
                     host_isn, venue_isn, truth, counts, order["client_order_id"].astype(np.int64))


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))

"""From a capture to per-trigger tick-to-trade: the pipeline behind `lab measure`.

1. Stream the capture in batches (bounded memory). Decode each batch
   (lab.analysis.decode) and keep only what the measurement needs: per MD
   datagram (UDP payload with a valid WM header) its stamp, seq and frame
   length; per TCP segment that may carry orders its header fields and a copy
   of its payload.
2. Reassemble the TCP flows (lab.analysis.reassembly) and frame them: FIX 4.2
   when a stream starts with "8=FIX", else the binary order entry. Orders are
   NewOrder (binary) and NewOrderSingle (FIX 35=D) messages.
3. Turn stamps into first-bit times under the capture's convention
   (lab.analysis.convention) and match orders to MD (lab.analysis.match).

Per trigger:
- t_md_ns: first bit of the MD frame at the tap.
- order_first_bit_ns: first bit of the first frame that carried bytes of the
  order (counting each byte at its first arrival; retransmissions do not count).
- order_last_byte_ns: when the whole order had been on the wire: the latest of
  (first bit + wire time) over the frames that first carried its bytes, which
  is the frame with its last byte unless part of it went out of order. An
  order counts at its last byte. Needs the line rate.
- order_last_frame_first_bit_ns: first bit of that completing frame.
- tick_to_trade_ns = order_first_bit_ns - t_md_ns.
For `--match nearest` an order's time is its completing frame's first bit:
a prefix put on the wire early does not make it belong to an earlier MD.
"""
from __future__ import annotations

import ipaddress
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from engine.protocol import orders as order_format
from engine.protocol.fix import TRIGGER_SEQ_TAG, fix_tag_values, frame_fix_stream
from lab.analysis import convention
from lab.analysis.decode import OK, PROTO_TCP, PROTO_UDP, SYN, Workspace, decode
from lab.analysis.gather import gather_ragged
from lab.analysis.match import FIX_TAG, NEAREST, TRIGGER, Matches, MatchMode, by_trigger, nearest
from lab.analysis.reassembly import Segments, reassemble
from lab.capture import NO_TIMESTAMP, open_capture
from lab.capture.trailers import restamp_from_trailers
from lab.errors import LabError

FIX_START = b"8=FIX"


class MeasureError(LabError):
    """Options of a measurement that cannot work together."""


@dataclass(frozen=True)
class Endpoint:
    """A destination IPv4 address and port that picks one flow."""
    ip: int
    port: int

    def __str__(self) -> str:
        return f"{ipaddress.IPv4Address(self.ip)}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """'239.1.1.1:5000' -> Endpoint."""
    host, _, port = text.rpartition(":")
    try:
        ip = int(ipaddress.IPv4Address(host))
        number = int(port)
    except ValueError:
        raise MeasureError(f"{text!r} is not IPv4:PORT, e.g. 239.1.1.1:5000") from None
    if not 0 < number < 65536:
        raise MeasureError(f"{text!r}: port must be 1-65535")
    return Endpoint(ip, number)


@dataclass
class MeasureOptions:
    convention: str = convention.HARDWARE
    line_rate_bps: int | None = None
    match: MatchMode = field(default_factory=lambda: MatchMode(TRIGGER))
    md_flow: Endpoint | None = None      # only UDP to here is MD (and any datagram there counts)
    order_flow: Endpoint | None = None   # only TCP to here carries orders
    trailer: str | None = None           # "expcap" or "metamako": stamps from the timing card's trailer
    batch_packets: int = 1 << 18        # ~46 MB of a typical capture per batch; three are mapped at once
    progress: Callable[[int], None] | None = None   # called with the bytes read so far


@dataclass
class Measurement:
    path: str
    format: str
    packets: int
    interfaces: list
    options: MeasureOptions
    md: dict[str, np.ndarray]          # one row per MD datagram
    orders: dict[str, np.ndarray]      # one row per order message
    matches: Matches
    per_trigger: dict[str, np.ndarray]
    undecoded: dict[str, int]          # packets decode() could not use, by reason
    tcp: dict                          # reassembly and framing figures
    damage: list                       # lab.capture.Damage entries
    non_monotonic: int


def measure(path, options: MeasureOptions | None = None) -> Measurement:
    options = options or MeasureOptions()
    convention.check(options.convention, options.line_rate_bps)
    if options.trailer and options.convention != convention.HARDWARE:
        raise MeasureError("timing-card trailer stamps mark the frame's first bit: use --convention hardware")
    collector = _Collector(options)
    with open_capture(path) as capture:
        for batch in read_ahead(capture.batches(options.batch_packets, release=False)):
            if options.trailer:
                batch = restamp_from_trailers(batch, options.trailer)
            collector.add(batch, [interface.linktype for interface in capture.interfaces])
            capture.release_before(int(batch.offset[-1]))
            if options.progress:
                options.progress(capture.position)
        if options.trailer and "no timestamp" in collector.undecoded:   # the capture's own stamps are unused
            collector.undecoded["no valid trailer"] = collector.undecoded.pop("no timestamp")
        md = collector.md_table()
        segments, segment_info = collector.segments()
        orders, tcp = _orders(segments, segment_info, options)
        if options.match.kind == NEAREST:
            matches = nearest(md["t_md_ns"], orders["order_last_frame_first_bit_ns"])
        else:
            matches = by_trigger(md["seq"], md["t_md_ns"], orders["trigger_seq"], orders["order_first_bit_ns"])
        return Measurement(
            path=str(path), format=capture.format, packets=collector.packets,
            interfaces=list(capture.interfaces), options=options, md=md, orders=orders, matches=matches,
            per_trigger=_per_trigger(md, orders, matches, options), undecoded=collector.undecoded,
            tcp=tcp, damage=list(capture.damage), non_monotonic=capture.non_monotonic)


def read_ahead(batches: Iterator) -> Iterator:
    """The batches, walked one ahead in a thread.

    The C walk and the C decode release the GIL, so with two cores the walk of
    the next batch overlaps the decode of this one. The walk's exceptions come
    out here; leaving the loop early stops the walk.
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def walk() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
        except Exception as exc:          # handed to the consumer, raised there
            offer(exc)
        finally:
            offer(done)

    walker = threading.Thread(target=walk, name="lab-measure-walk", daemon=True)
    walker.start()
    try:
        while (item := handoff.get()) is not done:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        walker.join()


class _Collector:
    """What the measurement keeps from each batch."""

    def __init__(self, options: MeasureOptions):
        self.options = options
        self.packets = 0
        self.undecoded: dict[str, int] = {}
        self._md: list[dict] = []
        self._tcp: list[dict] = []
        self._payload: list[np.ndarray] = []
        self._payload_bytes = 0
        self._workspace = Workspace()

    def add(self, batch, linktypes) -> None:
        table, md_seq = decode(batch, linktypes, md_seq=True, workspace=self._workspace)
        for reason, count in table.status_counts().items():
            self.undecoded[reason] = self.undecoded.get(reason, 0) + count
        stamped = table.ts_ns != NO_TIMESTAMP
        missing = int(np.count_nonzero(~stamped))
        if missing:
            self.undecoded["no timestamp"] = self.undecoded.get("no timestamp", 0) + missing
        usable = (table.status == OK) & stamped
        self._add_md(table, md_seq, usable)
        tcp = usable & (table.proto == PROTO_TCP) & (table.direction != convention.INBOUND)
        tcp &= (table.payload_caplen > 0) | ((table.tcp_flags & SYN) != 0)
        if self.options.order_flow:
            tcp &= (table.dst_ip == self.options.order_flow.ip) & (table.dst_port == self.options.order_flow.port)
        self._add_segments(table, batch.data, np.flatnonzero(tcp))
        self.packets += len(table)

    def _add_md(self, table, md_seq, usable) -> None:
        flow = self.options.md_flow
        if flow:       # any datagram to the MD flow counts, with or without a WM header
            rows = np.flatnonzero(usable & (table.proto == PROTO_UDP) & (table.dst_ip == flow.ip)
                                  & (table.dst_port == flow.port))
        else:          # md_seq >= 0 only on decoded UDP with a valid WM header
            rows = np.flatnonzero(usable & (md_seq >= 0))
        self._md.append({"seq": md_seq[rows], "t_md_ns": self._first_bit(table, rows, inbound=True),
                         "packet": rows + self.packets})

    def _first_bit(self, table, rows, inbound: bool) -> np.ndarray:
        """First-bit times of these rows' frames; `inbound` is their role where epb_flags are absent."""
        options = self.options
        if options.convention == convention.HARDWARE:
            return table.ts_ns[rows]
        return convention.first_bit_ns(table.ts_ns[rows], convention.inbound_mask(table.direction[rows], inbound),
                                       convention.ethernet_frame_len(table, rows), options.convention,
                                       options.line_rate_bps)

    def _add_segments(self, table, data, rows) -> None:
        captured = table.payload_caplen[rows].astype(np.int64)
        payload, where = gather_ragged(data, table.payload_offset[rows], captured)
        self._tcp.append({
            "key_ips": table.src_ip[rows].astype(np.uint64) << np.uint64(32) | table.dst_ip[rows],
            "key_ports": table.src_port[rows].astype(np.uint32) << np.uint32(16) | table.dst_port[rows],
            "seq": table.tcp_seq[rows],
            "length": table.payload_len[rows].astype(np.int64),
            "captured": captured,
            "syn": (table.tcp_flags[rows] & SYN) != 0,
            "where": where + self._payload_bytes,
            "first_bit_ns": self._first_bit(table, rows, inbound=False),
            "frame_len": convention.ethernet_frame_len(table, rows),
            "packet": rows + self.packets,
        })
        self._payload.append(payload)
        self._payload_bytes += payload.size

    def md_table(self) -> dict[str, np.ndarray]:
        md = _concat(self._md, {"seq": np.int64, "t_md_ns": np.int64, "packet": np.int64})
        self._md = []
        return md

    def segments(self) -> tuple[Segments, dict[str, np.ndarray]]:
        tcp = _concat(self._tcp, {"key_ips": np.uint64, "key_ports": np.uint32, "seq": np.uint32,
                                  "length": np.int64, "captured": np.int64, "syn": bool, "where": np.int64,
                                  "first_bit_ns": np.int64, "frame_len": np.int64, "packet": np.int64})
        payload = np.concatenate(self._payload) if self._payload else np.zeros(0, np.uint8)
        self._tcp, self._payload = [], []
        import pandas as pd  # hash-based factorize: flows in order of appearance
        ips, _ = pd.factorize(tcp["key_ips"])
        flow, flow_keys = pd.factorize((ips.astype(np.int64) << 32) | tcp["key_ports"].astype(np.int64))
        segments = Segments(flow=flow.astype(np.int64), seq=tcp["seq"], length=tcp["length"],
                            captured=tcp["captured"], syn=tcp["syn"], payload=payload, where=tcp["where"])
        info = {"first_bit_ns": tcp["first_bit_ns"], "frame_len": tcp["frame_len"], "packet": tcp["packet"],
                "flows": np.int64(flow_keys.size)}
        return segments, info


def _concat(parts: list[dict], dtypes: dict) -> dict[str, np.ndarray]:
    return {name: np.concatenate([np.zeros(0, dtype)] + [part[name] for part in parts]).astype(dtype, copy=False)
            for name, dtype in dtypes.items()}


def _orders(segments: Segments, info: dict, options: MeasureOptions) -> tuple[dict[str, np.ndarray], dict]:
    """Reassemble and frame every flow; one row per order message (NewOrder / 35=D)."""
    flows = int(info["flows"])
    streams = reassemble(segments, flows)
    parts = []
    framing_errors = []
    for flow in range(flows):
        stream = streams.stream(flow)
        if stream.size == 0:
            continue
        is_fix = stream[:len(FIX_START)].tobytes() == FIX_START
        frames = frame_fix_stream(stream) if is_fix else order_format.frame_order_stream(stream)
        if frames.error:
            framing_errors.append({"flow": flow, "offset": frames.error_offset, "error": frames.error})
        if is_fix:
            new = frames.msg_type == ord("D")
            tag = options.match.fix_tag if options.match.kind == FIX_TAG else TRIGGER_SEQ_TAG
            trigger = fix_tag_values(stream, frames.offset[new], frames.length[new], tag)
        else:
            new = frames.msg_type == order_format.NEW_ORDER_TYPE
            trigger = _u64_at(stream, frames.offset[new] + order_format.NEW_ORDER_TRIGGER_SEQ_OFFSET)
        parts.append({"flow": np.full(int(new.sum()), flow, np.int64), "offset": frames.offset[new],
                      "length": frames.length[new], "trigger_seq": trigger})
    rows = _concat(parts, {"flow": np.int64, "offset": np.int64, "length": np.int64, "trigger_seq": np.int64})
    first_bit = info["first_bit_ns"]
    last_bit = (first_bit + convention.wire_time_ns(info["frame_len"], options.line_rate_bps)
                if options.line_rate_bps else None)
    first, completing, last = streams.span_times(rows["flow"], rows["offset"], rows["length"], first_bit, last_bit)
    orders = {
        "trigger_seq": rows["trigger_seq"],
        "order_first_bit_ns": first,
        "order_last_frame_first_bit_ns": first_bit[completing],
        "flow": rows["flow"],
        "stream_offset": rows["offset"],
        "packet": info["packet"][completing],
    }
    if last is not None:
        orders["order_last_byte_ns"] = last
    tcp = {
        "flows": flows,
        "segments": len(segments),
        "duplicate_bytes": streams.duplicate_bytes,
        "bytes_after_holes": int((streams.extent - streams.contiguous).sum()),
        "framing_errors": framing_errors,
    }
    return orders, tcp


def _u64_at(stream: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Little-endian u64 at each offset (all inside the stream), as int64."""
    words, _ = gather_ragged(stream, offsets, np.full(offsets.size, 8, np.int64))
    return words.view("<i8")


def _per_trigger(md: dict, orders: dict, matches: Matches, options: MeasureOptions) -> dict[str, np.ndarray]:
    columns = {
        "md_seq": md["seq"][matches.md],
        "t_md_ns": md["t_md_ns"][matches.md],
        "order_first_bit_ns": orders["order_first_bit_ns"][matches.order],
    }
    if "order_last_byte_ns" in orders:
        columns["order_last_byte_ns"] = orders["order_last_byte_ns"][matches.order]
    columns["tick_to_trade_ns"] = columns["order_first_bit_ns"] - columns["t_md_ns"]
    columns["order_last_frame_first_bit_ns"] = orders["order_last_frame_first_bit_ns"][matches.order]
    columns["md_packet"] = md["packet"][matches.md] + 1           # frame numbers as Wireshark counts
    columns["order_packet"] = orders["packet"][matches.order] + 1
    return columns

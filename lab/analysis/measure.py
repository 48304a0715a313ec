"""From a capture to per-trigger tick-to-trade: the pipeline behind `lab measure`.

1. Stream the capture in batches. Decode each batch (lab.analysis.decode) and
   keep only what the measurement needs: per MD datagram (UDP payload with a
   valid WM header) its stamp, seq and frame length; per TCP segment that may
   carry orders its header fields and a copy of its payload.
2. Every `epoch_packets` packets (a part of the capture), reassemble and frame
   the order flows (lab.analysis.flows): whole NewOrder (binary) and
   NewOrderSingle (FIX 35=D) messages become orders; only the bytes of unfinished
   messages are carried to the next part.
3. Turn stamps into first-bit times under the capture's convention
   (lab.analysis.convention) and match the part's orders to MD
   (lab.analysis.match.MdWindow): MD stays matchable for `match_window_ns` of
   capture time, then leaves the window. Per-trigger rows go to
   `per_trigger_sink` part by part when one is given.

So memory holds a part's working set, the unfinished messages and the MD window,
plus 8 bytes per matched trigger (its tick-to-trade, for exact percentiles):
it does not grow with the file otherwise. A capture of up to `epoch_packets`
packets is read as one part, and then nothing depends on the window.

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
import zipfile
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np

from engine.protocol.registry import DEFAULT_MD, md_protocol, md_protocols
from engine.telemetry import read_telemetry
from lab.analysis import convention
from lab.analysis.decode import MD_LAYOUT, OK, PROTO_TCP, PROTO_UDP, SYN, Workspace, decode
from lab.analysis.flows import SEGMENT_COLUMNS, OrderFlows, concat
from lab.analysis.gather import gather_ragged
from lab.analysis.match import AUTO, MD_COLUMNS, NEAREST, TRIGGER, MatchMode, MdWindow
from lab.capture import NO_TIMESTAMP
from lab.capture.archive import FileReport, open_captures
from lab.capture.records import INBOUND
from lab.capture.trailers import restamp_from_trailers
from lab.errors import LabError

SNIFF_DATAGRAMS = 2000          # UDP datagrams each MD protocol is tried on before one is chosen


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
    md_protocol: str | None = None       # the market-data protocol's name (None: sniffed from the UDP)
    order_protocol: str | None = None    # the order protocol's name (None: sniffed per TCP flow)
    links: tuple | None = None           # (client order ids, trigger seqs), sorted by id: telemetry's link
    #                                      for orders whose protocol carries no trigger (OUCH)
    md_flow: Endpoint | None = None      # only UDP to here is MD (and any datagram there counts)
    order_flow: Endpoint | None = None   # only TCP to here carries orders
    trailer: str | None = None           # "expcap" or "metamako": stamps from the timing card's trailer
    interface: str | None = None         # only packets of the pcapng interface(s) with this name (a tap)
    batch_packets: int = 1 << 18        # ~46 MB of a typical capture per batch; three are mapped at once
    epoch_packets: int = 1 << 21        # packets per part: orders are framed and matched part by part
    match_window_ns: int = 10**9        # how long an MD message stays matchable across parts
    listed: int = 100                   # misses and duplicates kept for listing, per kind (all are counted)
    progress: Callable[[int, int], None] | None = None   # called with the bytes and packets read so far
    per_trigger_sink: Callable[[dict[str, np.ndarray]], None] | None = None
    # given a sink, each part's per-trigger rows go to it and only tick_to_trade_ns is kept


MISS_KINDS = ("unmatched_md", "unmatched_orders", "duplicate_orders", "duplicate_md")
ORDER_LISTING = ("trigger_seq", "order_first_bit_ns", "flow", "packet")


@dataclass
class Measurement:
    path: str
    format: str
    packets: int
    interfaces: list
    options: MeasureOptions
    counts: dict[str, int]             # md_messages, orders, matched and each of MISS_KINDS
    misses: dict[str, dict[str, np.ndarray]]   # the first `listed` of each of MISS_KINDS; packet 1-based
    per_trigger: dict[str, np.ndarray]
    undecoded: dict[str, int]          # packets decode() could not use, by reason
    tcp: dict                          # reassembly and framing figures
    damage: list                       # lab.capture.Damage entries
    non_monotonic: int
    parts: int                         # epochs the capture was read in
    carried_peak: dict[str, int]       # most MD rows and order payload bytes held from one part to the next
    protocols: dict                    # the MD protocol and the order protocols measured, by name
    md_problems: dict[str, int]        # what the MD protocol could not use, by reason
    files: list[FileReport] | None = None   # several files read as one: each file, in argument order
    warnings: list[str] = field(default_factory=list)   # one line per file skipped or damaged
    bytes_read: int = 0                # bytes walked over all files


def per_trigger_columns(line_rate_bps: int | None) -> tuple[str, ...]:
    return ("md_seq", "t_md_ns", "order_first_bit_ns", *(("order_last_byte_ns",) if line_rate_bps else ()),
            "tick_to_trade_ns", "order_last_frame_first_bit_ns", "md_packet", "order_packet")


def measure(path, options: MeasureOptions | None = None) -> Measurement:
    """path: a capture file, or several paths (files, directories, globs; lab.capture.archive)
    read as one capture merged by timestamp as mergecap merges them."""
    options = options or MeasureOptions()
    convention.check(options.convention, options.line_rate_bps)
    if options.trailer and options.convention != convention.HARDWARE:
        raise MeasureError("timing-card trailer stamps mark the frame's first bit: use --convention hardware")
    if options.epoch_packets < 1 or options.match_window_ns < 0:
        raise MeasureError("epoch_packets must be >= 1 and match_window_ns >= 0")
    collector = _Collector(options)
    results = _Results(options)
    with open_captures(path) as captures:
        for batch in read_ahead(captures.batches(options.batch_packets, release=False)):
            stamped = restamp_from_trailers(batch, options.trailer) if options.trailer else batch
            collector.add(stamped, [interface.linktype for interface in captures.interfaces],
                          _interfaces_named(captures.interfaces, options.interface))
            captures.release(batch)
            if collector.pending >= options.epoch_packets:
                results.add(*collector.take(), final=False)
            if options.progress:
                options.progress(captures.position, collector.packets)
        results.add(*collector.take(), final=True)
        if options.interface is not None and not _interfaces_named(captures.interfaces, options.interface):
            names = ", ".join(sorted({str(i.name) for i in captures.interfaces}))
            raise MeasureError(f"{captures.label}: no interface named {options.interface!r} (interfaces: {names})")
        if options.trailer and "no timestamp" in collector.undecoded:   # the capture's own stamps are unused
            collector.undecoded["no valid trailer"] = collector.undecoded.pop("no timestamp")
        return Measurement(
            path=captures.label, format=captures.format, packets=collector.packets,
            interfaces=list(captures.interfaces), options=replace(options, match=results.mode),
            counts=results.counts, misses=results.misses, per_trigger=results.per_trigger(),
            undecoded=collector.undecoded, tcp=results.flows.figures(), damage=list(captures.damage),
            non_monotonic=captures.non_monotonic, parts=results.parts,
            carried_peak={"md_rows": results.window_peak, "order_bytes": results.flows.carried_peak},
            protocols={"md": collector.md.name if collector.md else None, "orders": results.flows.protocols()},
            md_problems=collector.md_problems, files=None if captures.single else captures.reports,
            warnings=list(captures.warnings), bytes_read=captures.position)


def _interfaces_named(interfaces, name: str | None) -> list[int] | None:
    return None if name is None else [i for i, interface in enumerate(interfaces) if interface.name == name]


class _Results:
    """Orders framed, matched and tallied part by part."""

    def __init__(self, options: MeasureOptions):
        self.options = options
        self.mode = options.match if options.match.kind != AUTO else MatchMode(TRIGGER)
        self.flows = OrderFlows(self.mode, options.line_rate_bps, options.order_protocol, options.links)
        self.window = MdWindow(self.mode, options.match_window_ns)
        self.counts = dict.fromkeys(("md_messages", "orders", "matched", *MISS_KINDS), 0)
        self.misses: dict[str, dict[str, np.ndarray]] = {}
        self.kept: list[dict[str, np.ndarray]] = []
        self.parts = self.window_peak = 0

    def add(self, md: dict, segments: dict, payload: np.ndarray, newest_ns: int | None, final: bool) -> None:
        self.parts += 1
        orders = self.flows.add(segments, payload, final)
        if self.options.match.kind == AUTO and self.flows.carry_triggers() is False:
            self.mode = self.window.mode = MatchMode(NEAREST)
        order_time = orders["order_last_frame_first_bit_ns" if self.mode.kind == NEAREST
                            else "order_first_bit_ns"]
        found = self.window.match(md, orders["trigger_seq"], orders["order_first_bit_ns"], order_time,
                                  None if final else newest_ns)
        self.window_peak = max(self.window_peak, len(self.window))
        self.counts["md_messages"] += md["seq"].size
        self.counts["orders"] += orders["trigger_seq"].size
        self.counts["matched"] += found.order.size
        order_listing = {name: orders[name] for name in ORDER_LISTING}
        self._miss("unmatched_md", found.window, found.unmatched_md)
        self._miss("duplicate_md", found.window, found.duplicate_md)
        self._miss("unmatched_orders", order_listing, found.unmatched_orders)
        self._miss("duplicate_orders", order_listing, found.duplicate_orders)
        rows = self._per_trigger(found.md, {name: values[found.order] for name, values in orders.items()})
        if self.options.per_trigger_sink:
            self.options.per_trigger_sink(rows)
            rows = {"tick_to_trade_ns": rows["tick_to_trade_ns"]}
        self.kept.append(rows)

    def _miss(self, kind: str, columns: dict[str, np.ndarray], rows: np.ndarray) -> None:
        """Count the rows of `columns` that missed; list the first `listed` of them."""
        self.counts[kind] += rows.size
        listed = {name: values[rows[:self.options.listed]] for name, values in columns.items()}
        listed["packet"] = listed["packet"] + 1                # frame numbers as Wireshark counts
        held = self.misses.get(kind)
        self.misses[kind] = listed if held is None else {
            name: np.concatenate([held[name], listed[name]])[:self.options.listed] for name in held}

    def _per_trigger(self, md: dict, orders: dict) -> dict[str, np.ndarray]:
        columns = {"md_seq": md["seq"], "t_md_ns": md["t_md_ns"], "order_first_bit_ns": orders["order_first_bit_ns"]}
        if "order_last_byte_ns" in orders:
            columns["order_last_byte_ns"] = orders["order_last_byte_ns"]
        columns["tick_to_trade_ns"] = columns["order_first_bit_ns"] - columns["t_md_ns"]
        columns["order_last_frame_first_bit_ns"] = orders["order_last_frame_first_bit_ns"]
        columns["md_packet"] = md["packet"] + 1                # frame numbers as Wireshark counts
        columns["order_packet"] = orders["packet"] + 1
        return columns

    def per_trigger(self) -> dict[str, np.ndarray]:
        names = list(self.kept[0])
        return {name: np.concatenate([part[name] for part in self.kept]) for name in names}


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
        self.pending = 0                     # packets added since the last take
        self._newest: int | None = None      # the latest usable stamp so far
        self.md = md_protocol(options.md_protocol) if options.md_protocol else None   # None until sniffed
        self.md_problems: dict[str, int] = {}

    def add(self, batch, linktypes, interfaces: list[int] | None = None) -> None:
        """interfaces: keep only packets of these interface indices (None: all)."""
        probe = self.md.kernel_probe if self.md is not None and self.md.kernel_probe else MD_LAYOUT
        table, md_seq = decode(batch, linktypes, md_seq=True, workspace=self._workspace, md_probe=probe)
        for reason, count in table.status_counts().items():
            self.undecoded[reason] = self.undecoded.get(reason, 0) + count
        stamped = table.ts_ns != NO_TIMESTAMP
        missing = int(np.count_nonzero(~stamped))
        if missing:
            self.undecoded["no timestamp"] = self.undecoded.get("no timestamp", 0) + missing
        usable = (table.status == OK) & stamped
        if interfaces is not None:
            usable &= np.isin(table.interface, interfaces)
        if usable.any():
            newest = int(table.ts_ns[usable].max())
            self._newest = newest if self._newest is None else max(self._newest, newest)
        if self.md is None:
            self.md = self._sniff_md(table, batch.data, usable)
        if self.md is not None:
            self._add_md(table, batch.data, md_seq, usable)
        tcp = usable & (table.proto == PROTO_TCP) & (table.direction != INBOUND)
        tcp &= (table.payload_caplen > 0) | ((table.tcp_flags & SYN) != 0)
        if self.options.order_flow:
            tcp &= (table.dst_ip == self.options.order_flow.ip) & (table.dst_port == self.options.order_flow.port)
        self._add_segments(table, batch.data, np.flatnonzero(tcp))
        self.packets += len(table)
        self.pending += len(table)

    def _udp(self, table, usable) -> np.ndarray:
        """Rows of the UDP datagrams that may be market data (to the MD flow, if one is named)."""
        udp = usable & (table.proto == PROTO_UDP)
        if self.options.md_flow:
            udp &= (table.dst_ip == self.options.md_flow.ip) & (table.dst_port == self.options.md_flow.port)
        return np.flatnonzero(udp)

    def _sniff_md(self, table, data, usable):
        """The MD protocol that finds the most messages in this batch's UDP (the default if none
        does); None while the capture has shown no UDP."""
        rows = self._udp(table, usable)[:SNIFF_DATAGRAMS]
        if not rows.size:
            return None
        found = [(p.messages(data, table.payload_offset[rows], table.payload_caplen[rows]).seq.size, -k, p)
                 for k, p in enumerate(md_protocols())]
        best = max(found, key=lambda f: f[:2])
        return best[2] if best[0] else md_protocol(DEFAULT_MD)

    def _add_md(self, table, data, md_seq, usable) -> None:
        if self.md.kernel_probe is None:     # many messages a datagram: the protocol frames them
            rows = self._udp(table, usable)
            found = self.md.messages(data, table.payload_offset[rows], table.payload_caplen[rows])
            for reason, count in found.problems.items():
                self.md_problems[reason] = self.md_problems.get(reason, 0) + count
            self._md.append({"seq": found.seq, "packet": rows[found.datagram] + self.packets,
                             "t_md_ns": self._first_bit(table, rows, inbound=True)[found.datagram]})
            return
        if self.options.md_flow:   # any datagram to the MD flow counts, with or without a header
            rows = self._udp(table, usable)
        else:                      # md_seq >= 0 only on decoded UDP with a valid header
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

    def take(self) -> tuple[dict, dict, np.ndarray, int | None]:
        """What was collected since the last take: (MD rows, TCP segments, their payload, newest stamp)."""
        md = concat(self._md, MD_COLUMNS)
        segments = concat(self._tcp, SEGMENT_COLUMNS)
        payload = np.concatenate(self._payload) if self._payload else np.zeros(0, np.uint8)
        newest = self._newest
        self._md, self._tcp, self._payload, self._payload_bytes, self.pending = [], [], [], 0, 0
        return md, segments, payload, newest


def read_telemetry_file(path: str):
    """engine.telemetry.read_telemetry, with a bad file as one MeasureError line."""
    try:
        return read_telemetry(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise MeasureError(f"{path}: not a readable wirelab telemetry file ({reason})") from None


def trigger_links(path: str) -> tuple[np.ndarray, np.ndarray]:
    """From a telemetry file, each order's client order id and the MD seq that triggered it,
    sorted by id: MeasureOptions.links."""
    return links_of(read_telemetry_file(path)[0])


def links_of(orders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """trigger_links of telemetry rows already read."""
    ids = orders["client_order_id"].astype(np.int64)
    order = np.argsort(ids, kind="stable")
    return ids[order], orders["md_seq"].astype(np.int64)[order]

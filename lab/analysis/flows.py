"""Order flows across the parts of a capture: reassembly and framing that carry only
unfinished bytes from one part to the next, so memory does not grow with the file.

`lab measure` hands the TCP segments of each part (an "epoch" of packets) to
`OrderFlows.add`. Every flow is reassembled (lab.analysis.reassembly) and framed
(by the order protocol its first bytes name: engine.protocol.registry); whole
messages become order rows. What a later part may still need is carried:
- the segments holding bytes past the last whole message (an incomplete message,
  or bytes beyond a hole), trimmed to start there;
- per flow, the TCP seq of that point, given to the next part's reassembly as a
  zero-length SYN ahead of the carried segments (the anchor); a retransmission of
  older bytes then lands before the stream's start and counts as a duplicate.

A hole (a lost segment) is waited for one whole part. If it is still there at
the next part's end, the flow stops there, as a flow ends at its first hole when
the capture is read in one part; the bytes after it are counted. A framing error
stops the flow for good, with the bytes before it kept.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from engine.protocol import registry
from lab.analysis.gather import gather_ragged
from lab.analysis.match import FIX_TAG, MatchMode
from lab.analysis.reassembly import Segments, reassemble
from simulator.framing import ethernet_wire_ns

_WRAP = 1 << 32

# one row per TCP segment, as lab.analysis.measure collects them
SEGMENT_COLUMNS = {"key_ips": np.uint64, "key_ports": np.uint32, "seq": np.uint32, "length": np.int64,
                   "captured": np.int64, "syn": bool, "where": np.int64, "first_bit_ns": np.int64,
                   "frame_len": np.int64, "packet": np.int64}
_CARRIED = ("flow", "seq", "length", "captured", "syn", "where", "first_bit_ns", "frame_len", "packet")
ORDER_COLUMNS = {"trigger_seq": np.int64, "order_first_bit_ns": np.int64, "order_last_frame_first_bit_ns": np.int64,
                 "order_last_byte_ns": np.int64, "flow": np.int64, "stream_offset": np.int64, "packet": np.int64}


def concat(parts: list[dict], dtypes: dict) -> dict[str, np.ndarray]:
    return {name: np.concatenate([np.zeros(0, dtype)] + [part[name] for part in parts]).astype(dtype, copy=False)
            for name, dtype in dtypes.items()}


class OrderFlows:
    """Every order flow of a capture, fed part by part."""

    def __init__(self, match: MatchMode, line_rate_bps: int | None, protocol: str | None = None, links=None):
        """protocol: the order protocol's name (None: sniffed per flow). links: (client order ids,
        their trigger seqs), sorted by id, for orders whose protocol carries no trigger."""
        self.match, self.line_rate_bps = match, line_rate_bps
        self.forced = registry.order_protocol(protocol) if protocol else None
        self.links = links
        self.problems: dict[str, int] = {}
        self.ids: dict[tuple[int, int], int] = {}       # (src+dst IP, src+dst port) -> flow id
        self.protocol: list[registry.OrderProtocol | None] = []   # per flow, once sniffed
        self.offset: list[int] = []         # stream offset of the first byte still wanted
        self.anchor: list[int | None] = []  # its TCP seq, once a part has been read
        self.hole_at: list[int] = []        # stream offset of a hole seen at the last part's end, or -1
        self.stopped: list[bool] = []
        self.carry = {name: np.zeros(0, SEGMENT_COLUMNS.get(name, np.int64)) for name in _CARRIED}
        self.carry_payload = np.zeros(0, np.uint8)
        self.carry_overlap = 0              # duplicate bytes among the carried segments, already counted
        self.segments = self.duplicate_bytes = self.bytes_after_holes = self.voids = 0
        self.framing_errors: list[dict] = []
        self.carried_peak = 0               # most payload bytes carried from one part to the next

    @property
    def flows(self) -> int:
        return len(self.ids)

    def figures(self) -> dict:
        return {"flows": self.flows, "segments": self.segments, "duplicate_bytes": self.duplicate_bytes,
                "bytes_after_holes": self.bytes_after_holes, "void_orders": self.voids,
                "framing_errors": self.framing_errors, "order_problems": self.problems}

    def protocols(self) -> list[str]:
        """The order protocols of the flows seen so far, by name."""
        return sorted({p.name for p in self.protocol if p is not None})

    def carry_triggers(self) -> bool | None:
        """Whether the flows' orders say which MD triggered them (None: no flow identified yet)."""
        known = [p for p in self.protocol if p is not None]
        return any(p.carries_trigger for p in known) or self.links is not None if known else None

    def _flow_ids(self, key_ips: np.ndarray, key_ports: np.ndarray) -> np.ndarray:
        ips, _ = pd.factorize(key_ips)            # hash-based: flows in order of appearance
        local, uniques = pd.factorize((ips.astype(np.int64) << 32) | key_ports.astype(np.int64))
        _, first = np.unique(local, return_index=True)
        to_global = np.empty(uniques.size, np.int64)
        for i, row in enumerate(first.tolist()):
            key = (int(key_ips[row]), int(key_ports[row]))
            if key not in self.ids:
                self.ids[key] = len(self.ids)
                self.protocol.append(None)
                self.offset.append(0)
                self.anchor.append(None)
                self.hole_at.append(-1)
                self.stopped.append(False)
            to_global[i] = self.ids[key]
        return to_global[local]

    def add(self, new: dict[str, np.ndarray], payload: np.ndarray, final: bool) -> dict[str, np.ndarray]:
        """One part's segments (SEGMENT_COLUMNS, arrival order; `where` indexes `payload`).
        Returns its whole orders (ORDER_COLUMNS; order_last_byte_ns only with a line rate)."""
        self.segments += new["seq"].size
        flow = self._flow_ids(new["key_ips"], new["key_ports"]) if new["seq"].size else np.zeros(0, np.int64)
        live = ~np.asarray(self.stopped, bool)[flow] if flow.size else np.zeros(0, bool)
        self.bytes_after_holes += int(new["captured"][~live & self._hole_stopped(flow)].sum())
        table = self._table(flow[live], {name: new[name][live] for name in _CARRIED if name != "flow"}, payload)
        segments = Segments(flow=table["flow"], seq=table["seq"], length=table["length"],
                            captured=table["captured"], syn=table["syn"], payload=table["payload"],
                            where=table["where"])
        streams = reassemble(segments, self.flows)
        self.duplicate_bytes += streams.duplicate_bytes - self.carry_overlap
        first_bit = table["first_bit_ns"]
        last_bit = (first_bit + ethernet_wire_ns(table["frame_len"], self.line_rate_bps)
                    if self.line_rate_bps else None)
        parts, used = [], np.zeros(self.flows, np.int64)
        for f in np.unique(segments.flow).tolist():
            rows, used[f] = self._frame(f, streams.stream(f), final)
            if rows:
                parts.append(rows)
        rows = concat(parts, {"flow": np.int64, "offset": np.int64, "length": np.int64, "trigger_seq": np.int64})
        first, completing, last = streams.span_times(rows["flow"], rows["offset"], rows["length"], first_bit,
                                                     last_bit)
        orders = {"trigger_seq": rows["trigger_seq"], "order_first_bit_ns": first,
                  "order_last_frame_first_bit_ns": first_bit[completing], "flow": rows["flow"],
                  "stream_offset": rows["offset"] + np.asarray(self.offset, np.int64)[rows["flow"]],
                  "packet": table["packet"][completing]}
        if last is not None:
            orders["order_last_byte_ns"] = last
        self._carry(table, segments, streams, used, final)
        return orders

    def _hole_stopped(self, flow: np.ndarray) -> np.ndarray:
        """Rows of flows stopped at a hole (not by a framing error): their bytes count as after holes."""
        at_hole = np.asarray([h >= 0 for h in self.hole_at], bool)
        return at_hole[flow] if flow.size else np.zeros(0, bool)

    def _table(self, flow: np.ndarray, new: dict, payload: np.ndarray) -> dict[str, np.ndarray]:
        """Anchors, then the carried segments, then the new ones: arrival order."""
        present = np.unique(np.concatenate([self.carry["flow"], flow]))
        anchored = np.asarray([f for f in present.tolist() if self.anchor[f] is not None], np.int64)
        anchors = {"flow": anchored, "seq": np.asarray([(self.anchor[f] - 1) % _WRAP for f in anchored.tolist()],
                                                       np.uint32),
                   "length": np.zeros(anchored.size, np.int64), "captured": np.zeros(anchored.size, np.int64),
                   "syn": np.ones(anchored.size, bool), "where": np.zeros(anchored.size, np.int64),
                   "first_bit_ns": np.zeros(anchored.size, np.int64), "frame_len": np.zeros(anchored.size, np.int64),
                   "packet": np.full(anchored.size, -1, np.int64)}
        fresh = dict(new, flow=flow, where=new["where"] + self.carry_payload.size)
        table = concat([anchors, self.carry, fresh], {name: SEGMENT_COLUMNS.get(name, np.int64) for name in _CARRIED})
        table["payload"] = np.concatenate([self.carry_payload, payload])
        return table

    def _frame(self, f: int, stream: np.ndarray, final: bool) -> tuple[dict | None, int]:
        """Whole messages of flow f's usable stream: (order rows or None, stream bytes used up)."""
        if self.stopped[f] or stream.size == 0:
            return None, 0
        if self.protocol[f] is None and self.forced is not None:
            self.protocol[f] = self.forced
        if self.protocol[f] is None:
            need = registry.sniff_bytes()
            if stream.size < need and not final:
                return None, 0                              # too little to tell the protocols apart yet
            self.protocol[f] = registry.sniff_orders(stream[:need].tobytes())
        frames = self.protocol[f].frame(stream)
        if frames.error:
            self.framing_errors.append({"flow": f, "offset": self.offset[f] + frames.error_offset,
                                        "error": frames.error})
            self.stopped[f] = True
        protocol = self.protocol[f]
        for reason, count in protocol.problems(stream, frames).items():
            self.problems[reason] = self.problems.get(reason, 0) + count
        new, qty, trigger = protocol.new_orders(stream, frames, self.match.fix_tag if self.match.kind == FIX_TAG
                                                else None)
        self.voids += int(np.count_nonzero(qty == 0))
        trading = qty != 0                # quantity 0 completes a started message without trading: a void
        new, trigger = new[trading], trigger[trading]
        if self.links is not None and not protocol.carries_trigger and new.size:
            trigger = _linked(self.links, protocol.order_ids(stream, frames, new))
        rows = {"flow": np.full(new.size, f, np.int64), "offset": frames.offset[new],
                "length": frames.length[new], "trigger_seq": trigger}
        return rows, frames.consumed

    def _carry(self, table: dict, segments: Segments, streams, used: np.ndarray, final: bool) -> None:
        """Keep the segments with bytes past what was used up, trimmed to start there."""
        holes = np.flatnonzero(streams.extent > streams.contiguous)
        for f in holes.tolist():
            hole_at = self.offset[f] + int(streams.contiguous[f])
            if final or self.hole_at[f] == hole_at or self.stopped[f]:
                self.bytes_after_holes += int(streams.extent[f] - streams.contiguous[f])
                if not self.stopped[f]:
                    self.stopped[f], self.hole_at[f] = True, hole_at
            else:
                self.hole_at[f] = hole_at
        for f in np.setdiff1d(np.unique(segments.flow), holes).tolist():
            if not self.stopped[f]:
                self.hole_at[f] = -1
        if final:
            self._set_carry(table, np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
            return
        stopped = np.asarray(self.stopped, bool)
        for f in np.unique(segments.flow).tolist():
            if not stopped[f]:
                self.anchor[f] = int(streams.base_seq[f] + used[f]) % _WRAP
                self.offset[f] += int(used[f])
        flow = segments.flow
        end = streams.position + segments.captured
        keep = np.flatnonzero(~stopped[flow] & (segments.captured > 0) & (end > used[flow]))
        cut = np.maximum(used[flow[keep]] - streams.position[keep], 0)
        # bytes past the cut already counted as duplicates: carried size minus what the pieces cover there
        piece_flow = flow[streams.piece_segment]
        cut_at = streams.start[piece_flow] + used[piece_flow]
        wanted = ~stopped[piece_flow]
        covered = int(np.maximum(streams.piece_end - np.maximum(streams.piece_start, cut_at), 0)[wanted].sum())
        overlap = int((segments.captured[keep] - cut).sum()) - covered
        self._set_carry(table, keep, cut, overlap)

    def _set_carry(self, table: dict, keep: np.ndarray, cut: np.ndarray, overlap: int) -> None:
        carry = {name: table[name][keep] for name in _CARRIED}
        data_seq = carry["seq"].astype(np.int64) + carry["syn"] + cut        # a SYN's data starts after it
        carry["seq"] = (data_seq % _WRAP).astype(np.uint32)
        carry["length"] = carry["length"] - cut
        carry["captured"] = carry["captured"] - cut
        carry["syn"] = np.zeros(keep.size, bool)
        payload, where = gather_ragged(table["payload"], carry["where"] + cut, carry["captured"])
        carry["where"] = where
        self.carry, self.carry_payload, self.carry_overlap = carry, payload, overlap
        self.carried_peak = max(self.carried_peak, payload.size)


def _linked(links, ids: np.ndarray) -> np.ndarray:
    """The trigger seq that `links` (sorted ids, their seqs) gives each id; -1 where it has none."""
    known_ids, seqs = links
    if not known_ids.size:
        return np.full(ids.size, -1, np.int64)
    at = np.minimum(np.searchsorted(known_ids, ids), known_ids.size - 1)
    return np.where(known_ids[at] == ids, seqs[at], -1).astype(np.int64)

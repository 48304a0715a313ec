"""The synth's files: the capture (pcap or pcapng, frames in stamp order under a timestamp
convention, written in chunks) and the truth CSV."""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from engine.clock import Calibration
from engine.telemetry import ORDER_ROW, write_telemetry
from lab.capture import Interface, PacketBatch, PcapngWriter, PcapWriter
from lab.errors import LabError
from lab.synth.encode import build_frames, ip_ids
from lab.synth.generator import TRUTH_COLUMNS, Synthesis

CHUNK_FRAMES = 1 << 15
VENUE = 3                                          # the synth feed's venue id


def finish(synthesis: Synthesis, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """Stamps under `convention`, and the frame order to write them in (by stamp)."""
    stamps = synthesis.stamps(convention)
    order = np.lexsort((synthesis.frames.first_ns, stamps))
    return stamps, order


def describe_convention(convention: str, rate_bps: int) -> str:
    if convention == "hardware":
        return ("wirelab synth host tap; hardware-style timestamps: every frame's first bit at the tap")
    return ("wirelab synth host tap; software-style timestamps: inbound frames at their last bit, "
            f"outbound at their first bit (line rate {rate_bps} b/s)")


def write_capture(synthesis: Synthesis, path: str, file_format: str, convention: str,
                  progress: Callable[[int], None] | None = None) -> dict:
    """Write the capture; returns what was written (frames, bytes, first and last stamps)."""
    stamps, order = finish(synthesis, convention)
    ip_id = ip_ids(synthesis.frames, order)
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


def write_links(synthesis: Synthesis, path: str) -> None:
    """A telemetry file (engine.telemetry's format, owner-only) that links each order's client order
    id to the MD seq that triggered it, as the engine records it: what `lab measure --telemetry`
    needs for orders that carry no trigger (OUCH). The stage columns are 0: the synth has no engine."""
    orders = np.zeros(synthesis.config.triggers, ORDER_ROW)
    orders["md_seq"], orders["client_order_id"] = synthesis.truth["md_seq"], synthesis.order_ids
    orders["venue"] = VENUE
    orders["kernel_tx_ns"] = synthesis.truth["order_first_bit_ns"]
    write_telemetry(path, orders, Calibration(0, 0, 10**9, 0.0, 0.0, 0.0, 0), {"source": "lab synth"})

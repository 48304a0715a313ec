"""Per-order telemetry: the file `lab measure --telemetry` reads.

One row per order sent. The TSC columns are raw counts; the file also carries
the run's Calibration, and the *_ns columns derived from it, so every stage can
be put on the kernel's clock:

    kernel_rx_ns -> app_in -> decision -> app_out -> kernel_tx_ns

Format: a NumPy .npz archive (`orders`: the ORDER_ROW structured array;
`calibration` and `meta`: JSON text). See docs/telemetry.md.
"""
from __future__ import annotations

import json
import os

import numpy as np

from engine.clock import Calibration

FORMAT = "wirelab-telemetry/1"

ORDER_ROW = np.dtype([
    ("md_seq", "<u8"),                 # MD datagram that triggered the order
    ("venue", "<u2"),
    ("client_order_id", "<u8"),        # as on the wire
    ("kernel_rx_ns", "<i8"),           # kernel RX stamp of the MD datagram
    ("app_in_tsc", "<u8"),             # the datagram entered the application (the origin)
    ("decision_tsc", "<u8"),           # the trade model decided
    ("app_out_tsc", "<u8"),            # just before the order's deciding bytes went to send()
    ("kernel_tx_ns", "<i8"),           # kernel TX stamp of those bytes (0 if none came back)
    ("prefix_kernel_tx_ns", "<i8"),    # tcp-prefix: TX stamp of the primed prefix (0 otherwise)
    ("order_bytes", "<u4"),            # bytes sent at the decision
    ("prefix_bytes", "<u4"),           # bytes sent ahead
])
NS_COLUMNS = ("app_in", "decision", "app_out")


TX_COLUMN = ORDER_ROW.names.index("kernel_tx_ns")
PREFIX_TX_COLUMN = ORDER_ROW.names.index("prefix_kernel_tx_ns")


class TelemetryRecorder:
    def __init__(self):
        self.rows: list[tuple] = []
        self.pending: dict[tuple[int, int], tuple[int, int]] = {}   # (venue, stream end offset) -> (row, column)

    def record(self, venue: int, end_offset: int, row: tuple, prefix_end: int | None = None) -> None:
        """One order's row; its TX stamp comes later. `prefix_end`: the end offset of its primed
        prefix, when that prefix's TX stamp has not come back yet either."""
        index = len(self.rows)
        self.pending[(venue, end_offset)] = (index, TX_COLUMN)
        if prefix_end is not None:
            self.pending[(venue, prefix_end)] = (index, PREFIX_TX_COLUMN)
        self.rows.append(row)

    def tx_stamp(self, venue: int, end_offset: int, kernel_tx_ns: int) -> bool:
        found = self.pending.pop((venue, end_offset), None)
        if found is None:
            return False
        index, column = found
        row = list(self.rows[index])
        row[column] = kernel_tx_ns
        self.rows[index] = tuple(row)
        return True

    def array(self) -> np.ndarray:
        return np.array(self.rows, dtype=ORDER_ROW)

    def save(self, path: str, calibration: Calibration, meta: dict | None = None) -> None:
        write_telemetry(path, self.array(), calibration, meta or {})


def write_telemetry(path: str, orders: np.ndarray, calibration: Calibration, meta: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        np.savez(out, orders=orders, calibration=np.array(json.dumps(calibration.to_dict())),
                 meta=np.array(json.dumps({"format": FORMAT, **meta})))


def read_telemetry(path: str) -> tuple[np.ndarray, Calibration, dict]:
    """(orders, calibration, meta). The orders gain *_ns columns for each TSC column."""
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(str(archive["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file")
        calibration = Calibration.from_dict(json.loads(str(archive["calibration"])))
        orders = archive["orders"]
    return orders, calibration, meta


def stage_ns(orders: np.ndarray, calibration: Calibration) -> dict[str, np.ndarray]:
    """Every stamp of every order on the kernel's clock, int64 ns."""
    out = {"kernel_rx": orders["kernel_rx_ns"].astype(np.int64),
           "kernel_tx": orders["kernel_tx_ns"].astype(np.int64)}
    for name in NS_COLUMNS:
        out[name] = calibration.to_ns(orders[f"{name}_tsc"].astype(np.int64))
    return out

"""Timestamp conventions and Ethernet wire time, in integer nanoseconds.

- hardware: every stamp is the frame's first bit at the tap (timing cards).
- software: an inbound frame is stamped when the host has all of it (its last
  bit), an outbound one as it starts to leave (its first bit); that is what
  pcap stamps on a host are.

Converting a software stamp of an inbound frame to its first bit subtracts the
frame's wire time at the line rate (simulator.framing.ethernet_wire_ns):

    wire bytes = 8 (preamble + SFD) + max(frame + 4 (FCS), 64)
    wire time  = ceil(wire bytes * 8 / rate), in whole ns

where `frame` is the captured frame's original length without FCS (wire_len).
Frames captured without an Ethernet header (Linux cooked, raw IP, loopback)
count as untagged Ethernet: 14 + the IPv4 total length.
"""
from __future__ import annotations

import numpy as np

from lab.analysis.decode import PacketTable
from lab.capture.records import INBOUND
from lab.errors import LabError
from simulator.framing import ethernet_wire_ns

HARDWARE = "hardware"
SOFTWARE = "software"
CONVENTIONS = (HARDWARE, SOFTWARE)

ETHERNET_HEADER = 14


class ConventionError(LabError):
    """A convention or line rate that cannot be used."""


def ethernet_frame_len(table: PacketTable, rows: np.ndarray) -> np.ndarray:
    """Ethernet frame bytes (no FCS) of each row: wire_len on Ethernet, else 14 + IPv4 length."""
    linktype = table.linktype[rows]
    wire_len = table.wire_len[rows].astype(np.int64)
    other = np.flatnonzero(linktype != 1)
    wire_len[other] = ETHERNET_HEADER + table.ip_len[rows[other]].astype(np.int64)
    return wire_len


def check(convention: str, line_rate_bps: int | None) -> None:
    if convention not in CONVENTIONS:
        raise ConventionError(f"unknown convention {convention!r}; use hardware or software")
    if convention == SOFTWARE and line_rate_bps is None:
        raise ConventionError("--convention software needs --line-rate (e.g. 10Gbps) to turn "
                              "end-of-frame stamps into first-bit times")


def first_bit_ns(ts_ns: np.ndarray, inbound: np.ndarray, frame_len: np.ndarray, convention: str,
                 line_rate_bps: int | None) -> np.ndarray:
    """Each frame's first bit at the tap from its stamp, under `convention`."""
    check(convention, line_rate_bps)
    if convention == HARDWARE:
        return ts_ns
    return ts_ns - np.where(inbound, ethernet_wire_ns(frame_len, line_rate_bps), 0)


def inbound_mask(direction: np.ndarray, default_inbound: bool) -> np.ndarray:
    """Direction from epb_flags where the capture recorded it, else the flow's role."""
    return np.where(direction == 0, default_inbound, direction == INBOUND)


"""The run info that `lab run` leaves in its pcapng: JSON in the first SHB's opt_comment.

It makes a run's capture self-describing: `lab measure --telemetry` finds there the
scenario (for the baseline order's path), the tap names, the host NIC latencies and the
lab's own clock samples. tshark shows it as the section's comment.
"""
from __future__ import annotations

import json
import struct

from lab.capture.formats import BLOCK_SHB, BYTE_ORDER_MAGIC, OPT_COMMENT, OPT_ENDOFOPT, SHB_FIXED
from lab.capture.records import CaptureError

RUN_INFO_FORMAT = "wirelab-run/1"
MAX_SHB_BYTES = 1 << 20


def section_comments(path) -> list[str]:
    """The opt_comment options of the file's first SHB ([] for pcap or an SHB without comments)."""
    try:
        with open(path, "rb") as f:
            head = f.read(SHB_FIXED.itemsize)
            if len(head) < SHB_FIXED.itemsize or struct.unpack_from("<I", head)[0] != BLOCK_SHB:
                return []
            magic_le = struct.unpack_from("<I", head, 8)[0]
            order = "<" if magic_le == BYTE_ORDER_MAGIC else ">"
            if struct.unpack_from(order + "I", head, 8)[0] != BYTE_ORDER_MAGIC:
                return []
            block_len = struct.unpack_from(order + "I", head, 4)[0]
            if not SHB_FIXED.itemsize + 4 <= block_len <= MAX_SHB_BYTES or block_len % 4:
                raise CaptureError(f"{path}: section header block length {block_len} is not usable")
            options = f.read(block_len - SHB_FIXED.itemsize - 4)
    except OSError as exc:
        raise CaptureError(f"{path}: {exc.strerror}") from None
    comments, at = [], 0
    while at + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, at)
        if code == OPT_ENDOFOPT or at + 4 + length > len(options):
            break
        if code == OPT_COMMENT:
            comments.append(options[at + 4:at + 4 + length].decode("utf-8", "replace"))
        at += 4 + length + (-length % 4)
    return comments


def run_info_comment(info: dict) -> str:
    return json.dumps({"format": RUN_INFO_FORMAT, **info}, separators=(",", ":"))


def read_run_info(path) -> dict | None:
    """The run info of a `lab run` capture, or None for any other capture."""
    for comment in section_comments(path):
        try:
            info = json.loads(comment)
        except ValueError:
            continue
        if isinstance(info, dict) and info.get("format") == RUN_INFO_FORMAT:
            return info
    return None

"""`lab info --pcap FILE`: what a capture holds, read in one streaming pass."""
from __future__ import annotations

import json

import numpy as np

from lab.capture import LINKTYPE_NAMES, NO_TIMESTAMP, open_capture
from lab.capture.records import skipped_report
from lab.table import render


def register(sub):
    p = sub.add_parser("info", help="packets, interfaces, time span and damage of a pcap/pcapng file",
                       description="Summarise a capture: packets, interfaces (link type, timestamp "
                                   "resolution, name), first and last stamp (the earliest and latest, "
                                   "whatever the order of the records: first_ts_ns and last_ts_ns in --json), "
                                   "bytes, and what could not be read.")
    p.add_argument("--pcap", required=True, metavar="FILE", help="pcap or pcapng capture")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def summarize_capture(path) -> dict:
    """The `lab info` figures. Stamps are ints in ns; first/last are the earliest and latest stamps."""
    packets = captured = wire = 0
    first = last = None
    per_interface: dict[int, int] = {}
    with open_capture(path) as capture:
        for batch in capture.batches():
            packets += len(batch)
            captured += int(batch.caplen.sum(dtype=np.int64))
            wire += int(batch.wire_len.sum(dtype=np.int64))
            for index, count in enumerate(np.bincount(batch.interface)):
                if count:
                    per_interface[index] = per_interface.get(index, 0) + int(count)
            stamps = batch.ts_ns[batch.ts_ns != NO_TIMESTAMP]
            if stamps.size:
                low, high = int(stamps.min()), int(stamps.max())
                first = low if first is None else min(first, low)
                last = high if last is None else max(last, high)
        document = {
            "file": str(path),
            "format": capture.format,
            "packets": packets,
            "interfaces": [{"index": i, "linktype": iface.linktype,
                            "linktype_name": LINKTYPE_NAMES.get(iface.linktype, "unsupported"),
                            "tsresol": iface.tsresol, "name": iface.name, "description": iface.description,
                            "snaplen": iface.snaplen, "packets": per_interface.get(i, 0)}
                           for i, iface in enumerate(capture.interfaces)],
            "first_ts_ns": first,
            "last_ts_ns": last,
            "duration_ns": 0 if first is None else last - first,
            "bytes": captured,
            "wire_bytes": wire,
            "file_bytes": capture.file_bytes,
            "non_monotonic": capture.non_monotonic,
            "missing_ts": capture.missing_ts,
        }
        if capture.damage:
            document["skipped"] = skipped_report(capture.damage)
    return document


def run(args) -> int:
    document = summarize_capture(args.pcap)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    rows = [[key.replace("_", " "), "-" if document[key] is None else document[key]]
            for key in ("format", "packets", "first_ts_ns", "last_ts_ns", "duration_ns", "bytes",
                        "wire_bytes", "file_bytes", "non_monotonic", "missing_ts")]
    lines = [document["file"], "", render(["", "value"], rows), ""]
    lines.append(render(["interface", "linktype", "tsresol", "snaplen", "packets", "name", "description"],
                        [[i["index"], f"{i['linktype']} ({i['linktype_name']})", i["tsresol"], i["snaplen"],
                          i["packets"], i["name"] or "-", i["description"] or "-"] for i in document["interfaces"]],
                        align="rlrrrll"))
    if "skipped" in document:
        skipped = document["skipped"]
        lines.append("")
        lines.append(f"damaged: skipped {skipped['bytes']} bytes, {skipped['records']} records")
        lines += [f"  {r['reason']} at byte {r['at_offset']}" for r in skipped["reasons"]]
    print("\n".join(lines))
    return 0

"""`lab info --pcap PATH...`: what a capture holds (or each of many files, and all of them), in one streaming pass."""
from __future__ import annotations

import json
import sys

import numpy as np

from lab.capture import LINKTYPE_NAMES, NO_TIMESTAMP, open_capture
from lab.capture.archive import (
    FileReport, damage_warning, expand_paths, is_single_file, merged_interfaces, none_readable, set_skipped_report,
)
from lab.capture.records import CaptureError, skipped_report
from lab.table import render


def register(sub):
    p = sub.add_parser("info", help="packets, interfaces, time span and damage of a pcap/pcapng file",
                       description="Summarise a capture: packets, interfaces (link type, timestamp "
                                   "resolution, name), first and last stamp (the earliest and latest, "
                                   "whatever the order of the records: first_ts_ns and last_ts_ns in --json), "
                                   "bytes, and what could not be read. Several files (or directories, globs) are "
                                   "reported per file and in total, as `lab measure` reads them together.")
    p.add_argument("--pcap", required=True, nargs="+", metavar="PATH",
                   help="pcap or pcapng capture; several files, directories (their files) and globs: each file "
                        "and the totals")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def summarize_capture(path) -> dict:
    """The `lab info` figures. Stamps are ints in ns; first/last are the earliest and latest stamps."""
    with open_capture(path) as capture:
        return _summarize(capture, path)


def _summarize(capture, path) -> dict:
    packets = captured = wire = 0
    first = last = None
    per_interface: dict[int, int] = {}
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
        "interfaces": [_interface_json(i, iface, per_interface.get(i, 0))
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


def _interface_json(index: int, iface, packets: int) -> dict:
    return {"index": index, "linktype": iface.linktype,
            "linktype_name": LINKTYPE_NAMES.get(iface.linktype, "unsupported"),
            "tsresol": iface.tsresol, "name": iface.name, "description": iface.description,
            "snaplen": iface.snaplen, "packets": packets}


def summarize_captures(paths) -> tuple[dict, list[str]]:
    """Each file's `lab info` figures and the totals over all of them, and one warning line per file
    skipped or damaged. Interfaces merge as mergecap merges them (lab.capture.archive); a file that
    cannot be opened is skipped, and CaptureError is raised only when none can."""
    files, reports, warnings, errors, docs, interface_lists = [], [], [], [], [], []
    for path in expand_paths(paths):
        try:
            with open_capture(path) as capture:
                document = _summarize(capture, path)
                interface_lists.append(list(capture.interfaces))
                reports.append(FileReport(path, capture.format, capture.file_bytes, document["packets"],
                                          damage=list(capture.damage)))
        except CaptureError as exc:
            errors.append(str(exc))
            warnings.append(f"{exc}; file skipped")
            reports.append(FileReport.unreadable(path, str(exc)))
            files.append({"file": path, "error": str(exc), "file_bytes": reports[-1].file_bytes})
            continue
        if capture.damage:
            warnings.append(damage_warning(path, capture.damage, document["packets"]))
        files.append(document)
        docs.append(document)
    if not docs:
        raise none_readable(errors)
    merged, maps = merged_interfaces(interface_lists)
    per_interface = [0] * len(merged)
    for document, local in zip(docs, maps):
        for entry in document["interfaces"]:
            per_interface[local[entry["index"]]] += entry["packets"]
    stamps = [d[key] for d in docs for key in ("first_ts_ns", "last_ts_ns") if d[key] is not None]
    first, last = (min(stamps), max(stamps)) if stamps else (None, None)
    formats = {d["format"] for d in docs}
    total = {
        "file": " ".join(map(str, [paths] if isinstance(paths, str) else paths)),
        "format": formats.pop() if len(formats) == 1 else "mixed",
        "files": files,
        "packets": sum(d["packets"] for d in docs),
        "interfaces": [_interface_json(i, iface, per_interface[i]) for i, iface in enumerate(merged)],
        "first_ts_ns": first,
        "last_ts_ns": last,
        "duration_ns": 0 if first is None else last - first,
        "bytes": sum(d["bytes"] for d in docs),
        "wire_bytes": sum(d["wire_bytes"] for d in docs),
        "file_bytes": sum(d["file_bytes"] for d in docs),
        "missing_ts": sum(d["missing_ts"] for d in docs),
        "warnings": warnings,
    }
    lost = set_skipped_report(reports)
    if lost:
        total["skipped"] = lost
    return total, warnings


def run(args) -> int:
    if not is_single_file(args.pcap):
        return _run_many(args)
    document = summarize_capture(args.pcap[0])
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    rows = [[key.replace("_", " "), "-" if document[key] is None else document[key]]
            for key in ("format", "packets", "first_ts_ns", "last_ts_ns", "duration_ns", "bytes",
                        "wire_bytes", "file_bytes", "non_monotonic", "missing_ts")]
    lines = [document["file"], "", render(["", "value"], rows), ""]
    lines.append(_interface_table(document["interfaces"]))
    if "skipped" in document:
        skipped = document["skipped"]
        lines.append("")
        lines.append(f"damaged: skipped {skipped['bytes']} bytes, {skipped['records']} records")
        lines += [f"  {r['reason']} at byte {r['at_offset']}" for r in skipped["reasons"]]
    print("\n".join(lines))
    return 0


def _interface_table(interfaces: list[dict]) -> str:
    return render(["interface", "linktype", "tsresol", "snaplen", "packets", "name", "description"],
                  [[i["index"], f"{i['linktype']} ({i['linktype_name']})", i["tsresol"], i["snaplen"],
                    i["packets"], i["name"] or "-", i["description"] or "-"] for i in interfaces],
                  align="rlrrrll")


def _run_many(args) -> int:
    document, warnings = summarize_captures(args.pcap)
    for warning in warnings:
        print(f"lab info: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    rows = [[f["file"], f.get("format", "-"), _dash(f.get("packets")), _dash(f.get("first_ts_ns")),
             _dash(f.get("last_ts_ns")), _dash(f.get("bytes")), f["file_bytes"],
             "not read" if "error" in f else ("damaged" if "skipped" in f else "ok")] for f in document["files"]]
    rows.append(["total", document["format"], document["packets"], _dash(document["first_ts_ns"]),
                 _dash(document["last_ts_ns"]), document["bytes"], document["file_bytes"], "-"])
    lines = [document["file"], "",
             render(["file", "format", "packets", "first ts ns", "last ts ns", "bytes", "file bytes", "status"], rows,
                    align="llrrrrrl"), "",
             f"duration ns {document['duration_ns']}, wire bytes {document['wire_bytes']}, "
             f"missing ts {document['missing_ts']}", ""]
    lines.append(_interface_table(document["interfaces"]))
    if "skipped" in document:
        skipped = document["skipped"]
        lines += ["", f"not read: {skipped['bytes']} bytes, {skipped['records']} records"]
        lines += [f"  {f['error']} (file skipped)" for f in skipped["files_skipped"]]
        lines += [f"  {r['file']}: {r['reason']} at byte {r['at_offset']}" for r in skipped["reasons"]]
    print("\n".join(lines))
    return 0


def _dash(value):
    return "-" if value is None else value

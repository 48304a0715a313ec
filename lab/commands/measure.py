"""`lab measure --pcap PATH...`: tick-to-trade per trigger, from any capture (or many files read as one)."""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from engine.protocol.registry import md_protocol_names, order_protocol_names
from lab.analysis import convention
from lab.analysis.exports import ExportError, TableWriter
from lab.analysis.hgrm import write_hgrm
from lab.analysis.match import MatchError, parse_match
from lab.analysis.measure import (
    MeasureError,
    Measurement,
    MeasureOptions,
    measure,
    parse_endpoint,
    per_trigger_columns,
    trigger_links,
)
from lab.analysis.plots import write_plot
from lab.capture.archive import file_bytes_of, first_path, set_skipped_report
from lab.capture.records import skipped_report
from lab.percentiles import SUMMARY_KEYS, summarize
from lab.progress import ProgressBar
from lab.run import measure_run, read_run_info
from lab.run.taps import HOST_TAP
from lab.table import render
from simulator.units import UnitError, format_rate, parse_duration, parse_rate

LISTED = 100   # misses and duplicates listed in the JSON (all are counted)
LISTED_FILES = 5   # files named in the table output of a set (the JSON lists all)


def _argument(parse):
    """An argparse type from a parser that raises our errors: bad values become usage errors."""
    def convert(text):
        try:
            return parse(text)
        except (UnitError, MatchError, MeasureError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


def register(sub):
    p = sub.add_parser(
        "measure", help="tick-to-trade per trigger from a pcap/pcapng capture",
        description="Decode a capture, reassemble the order flows, match each order to the market-data "
                    "message that triggered it and report tick-to-trade: the order's first bit at the tap (the first frame "
                    "carrying any of its bytes) minus t_MD, the MD frame's first bit at the tap. Each order's "
                    "last-byte time (which sets its priority at the arbiter) is reported beside it.")
    p.add_argument("--pcap", required=True, nargs="+", metavar="PATH",
                   help="pcap or pcapng capture; several files, directories (their files) and globs are read as "
                        "one capture, merged by timestamp as `mergecap -w out.pcapng FILES` merges them")
    p.add_argument("--trailer", choices=("expcap", "metamako"),
                   help="take each frame's stamp from a timing card's trailer (exact-capture's expcap "
                        "footer or the Arista/Metamako trailer) instead of the capture's own")
    p.add_argument("--convention", choices=convention.CONVENTIONS, default=convention.HARDWARE,
                   help="hardware: every stamp is the frame's first bit (timing cards; default). "
                        "software: inbound frames stamped at their last bit, outbound at their first "
                        "(pcap on a host); needs --line-rate")
    p.add_argument("--line-rate", type=_argument(parse_rate), metavar="RATE",
                   help='link rate at the tap, e.g. "10Gbps": converts software stamps and gives each '
                        "order's last-byte time")
    p.add_argument("--md", choices=md_protocol_names(),
                   help="market-data protocol (default: sniffed from the UDP; `lab protocols` lists them)")
    p.add_argument("--orders", choices=order_protocol_names(),
                   help="order protocol (default: sniffed per TCP flow)")
    p.add_argument("--match", type=_argument(parse_match), default="auto",
                   metavar="auto|trigger|nearest|fix-tag:N",
                   help="trigger: the order's trigger seq, or the one --telemetry links to its token; nearest: "
                        "first order after each MD; fix-tag:N: FIX tag N holds the MD seq; auto (default): "
                        "trigger where the orders carry it or telemetry links them, else nearest")
    p.add_argument("--md-flow", type=_argument(parse_endpoint), metavar="IP:PORT",
                   help="only UDP to this address is market data (any datagram there counts)")
    p.add_argument("--order-flow", type=_argument(parse_endpoint), metavar="IP:PORT",
                   help="only TCP to this address carries orders")
    p.add_argument("--match-window", type=_argument(parse_duration), default="1s", metavar="DURATION",
                   help="how long after it an MD message can still be matched when the capture is read in parts "
                        "(captures over 2Mi packets); default 1s")
    p.add_argument("--interface", metavar="NAME",
                   help="only the packets of this pcapng interface (a tap); a `lab run` capture defaults to host-tap")
    p.add_argument("--telemetry", metavar="RUN.tel",
                   help="the engine's telemetry: for a `lab run` capture, adds the implied tick-to-trade, its "
                        "decomposition per stage and the clock correlation; for any capture, links each order "
                        "that carries no trigger (OUCH) to its trigger by its token")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--csv", metavar="FILE", help="write one row per trigger as CSV")
    p.add_argument("--parquet", metavar="FILE", help="write one row per trigger as Parquet (needs pyarrow)")
    p.add_argument("--hgrm", metavar="FILE", help="write the HdrHistogram percentile distribution (.hgrm)")
    p.add_argument("--plot", metavar="FILE.png", help="write a histogram and CDF of tick-to-trade")
    p.set_defaults(run=run)


def run(args) -> int:
    convention.check(args.convention, args.line_rate)
    paths = args.pcap[0] if len(args.pcap) == 1 else args.pcap
    info = read_run_info(first_path(paths))
    links = trigger_links(args.telemetry) if args.telemetry else None
    if args.plot and not args.plot.lower().endswith(".png"):
        raise ExportError(f"--plot {args.plot}: the plot is written as PNG; name the file *.png")
    options = MeasureOptions(convention=args.convention, line_rate_bps=args.line_rate, match=args.match,
                             md_protocol=args.md, order_protocol=args.orders, links=links,
                             md_flow=args.md_flow, order_flow=args.order_flow, trailer=args.trailer,
                             match_window_ns=args.match_window // 1000, listed=LISTED,
                             interface=args.interface or (HOST_TAP if info else None))
    columns = per_trigger_columns(args.line_rate)
    tables = [TableWriter(path, columns, parquet) for path, parquet in ((args.csv, False), (args.parquet, True))
              if path]                          # made before the long read: a bad path fails first

    kept = []

    def write_rows(rows):
        for table in tables:
            table.write(rows)
        if args.telemetry and info is not None:
            kept.append(rows)

    try:
        with ProgressBar(file_bytes_of(paths), "B", "lab measure", unit_scale=True) as progress:
            options.progress = progress
            options.per_trigger_sink = write_rows
            result = measure(paths, options)
    finally:
        for table in tables:
            table.close()
    for warning in result.warnings:
        print(f"lab measure: warning: {warning}", file=sys.stderr)
    latency = result.per_trigger["tick_to_trade_ns"]
    if args.hgrm:
        write_hgrm(args.hgrm, latency)
    if args.plot:
        title = os.path.basename(result.path) if result.files is None else f"{len(result.files)} files"
        write_plot(args.plot, latency, f"tick-to-trade, {title} "
                                       f"({len(latency)} triggers, {_convention_text(result)})")
    document = to_json(result)
    if args.telemetry and info is not None:
        host = {name: np.concatenate([rows[name] for rows in kept]) for name in kept[0]} if kept else None
        document.update(measure_run(paths, args.telemetry, host, options).figures)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(to_text(result, document, args))
    return 0


def _convention_text(result: Measurement) -> str:
    rate = result.options.line_rate_bps
    if result.options.convention == convention.HARDWARE:
        return "hardware stamps (first bit)"
    return f"software stamps, inbound moved to first bit at {format_rate(rate)}"


def _listing(columns: dict) -> list[dict]:
    names = list(columns)
    return [dict(zip(names, map(int, row))) for row in zip(*columns.values())]


def to_json(result: Measurement) -> dict:
    counts = result.counts
    document = {
        "file": result.path,
        "format": result.format,
        "packets": result.packets,
        "md_messages": counts["md_messages"],
        "orders": counts["orders"],
        "matched": counts["matched"],
        "unmatched_md": counts["unmatched_md"],
        "unmatched_orders": counts["unmatched_orders"],
        "duplicates": counts["duplicate_orders"] + counts["duplicate_md"],
        "convention": result.options.convention,
        "timestamps": f"trailer:{result.options.trailer}" if result.options.trailer else "capture",
        "convention_note": _convention_text(result),
        "line_rate_bps": result.options.line_rate_bps,
        "match": str(result.options.match),
        "protocols": result.protocols,
        "md_problems": result.md_problems,
        "tick_to_trade_ns": summarize(result.per_trigger["tick_to_trade_ns"]),
        "misses": {
            "listed_at_most": result.options.listed,
            **{kind: _listing(result.misses[kind]) for kind in ("unmatched_orders", "duplicate_orders",
                                                                "duplicate_md")},
        },
        "tcp": result.tcp,
        "undecoded": result.undecoded,
        "non_monotonic": result.non_monotonic,
        "parts": result.parts,
    }
    if result.files is not None:            # several files read as one
        document["files"] = [file_json(report) for report in result.files]
        document["bytes_read"] = result.bytes_read
        document["warnings"] = result.warnings
        lost = set_skipped_report(result.files)
        if lost:
            document["skipped"] = lost
    elif result.damage:
        document["skipped"] = skipped_report(result.damage)
    return document


def file_json(report) -> dict:
    """One file of a set: what was read from it, or why it was skipped."""
    if report.error is not None:
        return {"file": report.path, "error": report.error, "file_bytes": report.file_bytes}
    document = {"file": report.path, "format": report.format, "packets": report.packets,
                "first_ts_ns": report.first_ts_ns, "last_ts_ns": report.last_ts_ns,
                "file_bytes": report.file_bytes, "bytes_read": report.bytes_read}
    if report.damage:
        document["skipped"] = skipped_report(report.damage)
    return document


def to_text(result: Measurement, document: dict, args) -> str:
    counts = [[name.replace("_", " "), document[name]] for name in
              ("packets", "md_messages", "orders", "matched", "unmatched_md", "unmatched_orders", "duplicates")]
    lines = [f"{result.path} ({result.format}): {_convention_text(result)}, match {document['match']}",
             f"protocols: market data {result.protocols['md'] or 'none seen'}, orders "
             f"{', '.join(result.protocols['orders']) or 'none seen'}", "",
             render(["", "count"], counts)]
    summary = document["tick_to_trade_ns"]
    lines += ["", "tick-to-trade (ns, nearest-rank percentiles)",
              render(list(SUMMARY_KEYS), [["-" if summary[k] is None else summary[k] for k in SUMMARY_KEYS]],
                     align="r" * len(SUMMARY_KEYS))]
    if not result.options.line_rate_bps:
        lines.append("order last-byte times need --line-rate")
    for kind, listed in document["misses"].items():
        if kind != "listed_at_most" and listed:
            lines.append(f"{kind.replace('_', ' ')} (first {min(len(listed), 5)}): "
                         + "; ".join(", ".join(f"{k} {v}" for k, v in row.items()) for row in listed[:5]))
    if any(document["md_problems"].values()):
        lines.append("market data not used: " + ", ".join(f"{k} {v}" for k, v in document["md_problems"].items() if v))
    if document["undecoded"]:
        lines.append("not decoded: " + ", ".join(f"{k} {v}" for k, v in document["undecoded"].items()))
    for error in document["tcp"]["framing_errors"]:
        lines.append(f"flow {error['flow']}: framing stopped at byte {error['offset']}: {error['error']}")
    if "files" in document:
        read = [f for f in document["files"] if "error" not in f]
        more = f", and {len(read) - LISTED_FILES} more" if len(read) > LISTED_FILES else ""
        lines.append(f"files: {len(read)} read of {len(document['files'])}, {document['bytes_read']} bytes: "
                     + ", ".join(f"{f['file']} ({f['packets']} packets)" for f in read[:LISTED_FILES]) + more)
    if "skipped" in document:
        skipped = document["skipped"]
        parts = [f"{f['error']} (file skipped)" for f in skipped.get("files_skipped", ())]
        parts += [(f"{r['file']}: " if "file" in r else "") + f"{r['reason']} at byte {r['at_offset']}"
                  for r in skipped["reasons"]]
        what = "not read:" if "files" in document else "damaged file: skipped"
        lines.append(f"{what} {skipped['bytes']} bytes, {skipped['records']} records: " + "; ".join(parts))
    if "implied_tick_to_trade_ns" in document:
        implied_summary = document["implied_tick_to_trade_ns"]
        lines += ["", f"implied tick-to-trade (ns), {document['scenario']}, {document['telemetry']['strategy']}",
                  render(list(SUMMARY_KEYS), [["-" if implied_summary[k] is None else implied_summary[k]
                                               for k in SUMMARY_KEYS]], align="r" * len(SUMMARY_KEYS)),
                  "", "decomposition (ns; the stages sum to the implied tick-to-trade)",
                  render(["stage", "p50", "p99"], [[stage, v["p50"], v["p99"]]
                                                   for stage, v in document["decomposition_ns"].items()])]
        c = document["correlation"]
        lines.append(f"clock: residual p99 {c['residual_p99_ns']:.0f} ns, drift {c['drift_ppm']:.3f} ppm, "
                     f"causality violations {c['causality_violations']}")
    for flag, path in (("csv", args.csv), ("parquet", args.parquet), ("hgrm", args.hgrm), ("plot", args.plot)):
        if path:
            lines.append(f"{flag}: {path}")
    return "\n".join(lines)


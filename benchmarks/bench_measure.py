"""`lab measure` against tshark and a dpkt loop, on one `lab synth` capture, in one run.

    python benchmarks/bench_measure.py --json [--triggers N] [--format pcap|pcapng]
        [--md wm|itch50] [--orders binary|fix|ouch42] [--tshark-packets M] [--dpkt-packets M] [--keep FILE]

Measured:
- lab measure in-process: lab.analysis.measure.measure() on the file (page
  cache warm), packets per second, and tracemalloc's peak of the numpy/Python
  heap during it.
- lab measure, the whole command: `python -m lab measure --pcap F --json` as a
  user runs it (interpreter start-up and imports included), and its peak RSS
  (VmHWM) against the file size. The file is memory-mapped; pages behind the
  reader are released as it goes, so RSS holds the working set, not the file.
- memory growth: the whole command again on a capture with half the triggers
  (both read in several parts); (peak RSS large - small) / (file large - small) is what each byte
  of capture adds to memory. Read in parts (2Mi packets), the measurement keeps
  only unfinished messages, a 1 s MD window and 8 bytes per trigger, so this
  stays near 0 where one pass would hold ~0.7.
- tshark extracting the same fields (-T fields: time, addresses, ports, TCP
  seq/ack/flags/len, UDP length). tshark runs ~30k-40k packets/s here, so it
  reads the first --tshark-packets packets (-c); its start-up time (a -c 1 run)
  is subtracted and the rate is extrapolated to the whole file. The JSON says so.
- a dpkt per-packet loop doing the same decode (Ethernet, IPv4, TCP/UDP
  fields, the MD header's magic and seq), on the first --dpkt-packets packets,
  extrapolated likewise.

Targets (issue 3): >= 5M packets/s in-process; the whole command >= 50x tshark
and >= 30x dpkt; peak memory <= 2x the file size, and bounded on files larger
than memory. With --md itch50 (issue 15): >= 3M packets/s in-process (several
messages a datagram), and tshark runs with its MoldUDP64 and SoupBinTCP/OUCH
dissectors on.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc

TARGETS = {"in_process_packets_per_s": 5_000_000, "speedup_vs_tshark": 50, "speedup_vs_dpkt": 30,
           "peak_rss_over_file_size": 2.0, "rss_growth_per_file_byte": 0.1}
TARGETS_BY_MD = {"itch50": {"in_process_packets_per_s": 3_000_000}}   # several messages a datagram
# tshark's dissector of a protocol, and fields that make it decode every message
TSHARK_DISSECTORS = {"itch50": ("moldudp64", ["moldudp64.sequence", "moldudp64.count", "moldudp64.msglen"]),
                     "ouch42": ("soupbintcp", ["soupbintcp.packet_type", "ouch.order_token", "ouch.shares"])}
MD_PORT, GATEWAY_PORT = 30001, 9000            # where lab synth puts them (lab.synth.addresses)
TSHARK_FIELDS = ["frame.time_epoch", "ip.src", "ip.dst", "ip.proto", "udp.srcport", "udp.dstport", "udp.length",
                 "tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags", "tcp.len"]


def run_child(argv: list[str]) -> tuple[float, int, bytes]:
    """Run a command; (wall seconds, peak RSS in bytes, stdout)."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = child.stdout.read()
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed: {err.decode(errors='replace').strip()}")
    return elapsed, usage.ru_maxrss * 1024, out


def warm(path: str) -> None:
    """Read the file once so every contender starts from the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def bench_lab_in_process(path: str, links_path: str) -> dict:
    from lab.analysis.measure import MeasureOptions, measure, trigger_links
    options = MeasureOptions(line_rate_bps=10**10, links=trigger_links(links_path))
    measure(path, options)                                  # imports and first-touch costs out of the way
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = measure(path, options)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    measure(path, options)
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    best = min(times)
    return {"packets": result.packets, "matched": result.counts["matched"], "seconds": round(best, 3),
            "seconds_all_runs": [round(t, 3) for t in times], "packets_per_s": round(result.packets / best),
            "heap_peak_bytes": heap_peak}


# `python -m lab ...`, reporting the process's own peak RSS (VmHWM) at exit. wait4's ru_maxrss
# would not do: Linux carries the forking parent's RSS across exec into it.
LAB_WITH_PEAK_RSS = ("import atexit, runpy, sys\n"
                     "def peak():\n"
                     "    hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
                     "    sys.stderr.write('\\nVmHWM_kB ' + hwm.split()[1] + '\\n')\n"
                     "atexit.register(peak)\n"
                     "sys.argv[0] = 'lab'\n"
                     "runpy.run_module('lab', run_name='__main__')\n")


def bench_lab_command(path: str, packets: int, links_path: str) -> dict:
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", LAB_WITH_PEAK_RSS, "measure", "--pcap", path, "--telemetry",
                            links_path, "--json"], capture_output=True, check=True)
    elapsed = time.perf_counter() - start
    assert json.loads(child.stdout)["packets"] == packets
    rss = int(child.stderr.split()[-1]) * 1024
    return {"seconds": round(elapsed, 3), "packets_per_s": round(packets / elapsed), "peak_rss_bytes": rss}


def bench_tshark(path: str, packets: int, subset: int, md: str, orders: str) -> dict:
    """tshark with the dissectors of the capture's protocols on, where it has them."""
    tshark = shutil.which("tshark")
    if tshark is None:
        return {"skipped": "tshark is not installed"}
    fields, options = list(TSHARK_FIELDS), ["-o", "tcp.reassemble_out_of_order:TRUE"]
    if md in TSHARK_DISSECTORS:
        options += ["-d", f"udp.port=={MD_PORT},{TSHARK_DISSECTORS[md][0]}"]
        fields += TSHARK_DISSECTORS[md][1]
    if orders in TSHARK_DISSECTORS:
        options += ["-d", f"tcp.port=={GATEWAY_PORT},{TSHARK_DISSECTORS[orders][0]}"]
        fields += TSHARK_DISSECTORS[orders][1]
    argv = [tshark, "-n", "-r", path, *options, "-T", "fields"] + [x for f in fields for x in ("-e", f)]
    startup, _, _ = run_child(argv + ["-c", "1"])
    count = min(subset, packets)
    elapsed, _, out = run_child(argv + ["-c", str(count)])
    assert out.count(b"\n") == count
    rate = count / max(elapsed - startup, 1e-9)
    return {"packets_read": count, "seconds": round(elapsed, 3), "startup_seconds": round(startup, 3),
            "packets_per_s": round(rate), "extrapolated": count < packets,
            "whole_file_seconds_estimate": round(startup + packets / rate, 1),
            "note": (f"tshark read the first {count} of {packets} packets (-c); the rate excludes its "
                     "start-up and is extrapolated to the whole file") if count < packets else "whole file"}


def bench_dpkt(path: str, packets: int, subset: int, file_format: str) -> dict:
    import dpkt
    count = min(subset, packets)
    columns = {name: [] for name in ("ts", "src", "dst", "sport", "dport", "seq", "ack", "flags", "length", "md_seq")}
    with open(path, "rb") as f:
        reader = dpkt.pcapng.Reader(f) if file_format == "pcapng" else dpkt.pcap.Reader(f)
        start = time.perf_counter()
        for index, (ts, buf) in enumerate(reader):
            if index == count:
                break
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP):
                continue
            l4 = ip.data
            columns["ts"].append(ts)
            columns["src"].append(ip.src)
            columns["dst"].append(ip.dst)
            if isinstance(l4, dpkt.tcp.TCP):
                columns["sport"].append(l4.sport)
                columns["dport"].append(l4.dport)
                columns["seq"].append(l4.seq)
                columns["ack"].append(l4.ack)
                columns["flags"].append(l4.flags)
                columns["length"].append(len(l4.data))
            elif isinstance(l4, dpkt.udp.UDP):
                columns["sport"].append(l4.sport)
                columns["dport"].append(l4.dport)
                payload = l4.data
                columns["length"].append(len(payload))
                if payload[:4] == b"WM\x01\x01":
                    columns["md_seq"].append(struct.unpack_from("<Q", payload, 8)[0])
        elapsed = time.perf_counter() - start
    rate = count / elapsed
    return {"packets_read": count, "seconds": round(elapsed, 3), "packets_per_s": round(rate),
            "extrapolated": count < packets, "md_messages_seen": len(columns["md_seq"]),
            "note": (f"the loop read the first {count} of {packets} packets; rate extrapolated")
            if count < packets else "whole file"}


def synth(path: str, triggers: int, file_format: str, md: str, orders: str) -> dict:
    """`lab synth`, with the order-to-trigger links beside it (path + .tel)."""
    _, _, out = run_child([sys.executable, "-m", "lab", "synth", "--out", path, "--triggers", str(triggers),
                           "--format", file_format, "--md", md, "--orders", orders, "--telemetry", path + ".tel",
                           "--json"])
    return json.loads(out)


def bench_memory_growth(path: str, command: dict, small_path: str, triggers: int, file_format: str, md: str,
                        orders: str) -> dict:
    small = synth(small_path, triggers // 2, file_format, md, orders)
    small_command = bench_lab_command(small_path, small["packets"], small_path + ".tel")
    large_bytes, small_bytes = os.path.getsize(path), os.path.getsize(small_path)
    growth = (command["peak_rss_bytes"] - small_command["peak_rss_bytes"]) / (large_bytes - small_bytes)
    return {"small_file_bytes": small_bytes, "small_peak_rss_bytes": small_command["peak_rss_bytes"],
            "large_file_bytes": large_bytes, "large_peak_rss_bytes": command["peak_rss_bytes"],
            "rss_growth_per_file_byte": round(growth, 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default prints it too)")
    parser.add_argument("--triggers", type=int, default=1_000_000)
    parser.add_argument("--format", choices=("pcap", "pcapng"), default="pcapng")
    parser.add_argument("--tshark-packets", type=int, default=200_000)
    parser.add_argument("--dpkt-packets", type=int, default=500_000)
    parser.add_argument("--keep", metavar="FILE", help="write the synth capture here and keep it")
    parser.add_argument("--md", choices=("wm", "itch50"), default="wm", help="market-data protocol of the capture")
    parser.add_argument("--orders", choices=("binary", "fix", "ouch42"), default="binary",
                        help="order protocol of the capture")
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="bench_measure_")
    path = args.keep or os.path.join(workdir, f"synth.{args.format}")
    try:
        start = time.perf_counter()
        packets = synth(path, args.triggers, args.format, args.md, args.orders)["packets"]
        synth_seconds = time.perf_counter() - start
        file_bytes = os.path.getsize(path)
        warm(path)
        lab = bench_lab_in_process(path, path + ".tel")
        command = bench_lab_command(path, packets, path + ".tel")
        memory = bench_memory_growth(path, command, os.path.join(workdir, f"small.{args.format}"), args.triggers,
                                     args.format, args.md, args.orders)
        tshark = bench_tshark(path, packets, args.tshark_packets, args.md, args.orders)
        dpkt_loop = bench_dpkt(path, packets, args.dpkt_packets, args.format)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    figures = {
        "in_process_packets_per_s": lab["packets_per_s"],
        "speedup_vs_tshark": (round(command["packets_per_s"] / tshark["packets_per_s"], 1)
                              if "packets_per_s" in tshark else None),
        "speedup_vs_dpkt": round(command["packets_per_s"] / dpkt_loop["packets_per_s"], 1),
        "peak_rss_over_file_size": round(command["peak_rss_bytes"] / file_bytes, 3),
        "rss_growth_per_file_byte": memory["rss_growth_per_file_byte"],
    }
    targets = dict(TARGETS, **TARGETS_BY_MD.get(args.md, {}))
    report = {
        "capture": {"triggers": args.triggers, "format": args.format, "md": args.md, "orders": args.orders,
                    "packets": packets, "file_bytes": file_bytes,
                    "synth_seconds": round(synth_seconds, 1)},
        "lab_measure_in_process": lab,
        "lab_measure_command": command,
        "memory_growth": memory,
        "tshark": tshark,
        "dpkt_loop": dpkt_loop,
        "in_process_speedup_vs_tshark": (round(lab["packets_per_s"] / tshark["packets_per_s"], 1)
                                         if "packets_per_s" in tshark else None),
        "in_process_speedup_vs_dpkt": round(lab["packets_per_s"] / dpkt_loop["packets_per_s"], 1),
        **figures,
        "targets": targets,
        "meets": {name: (None if figures[name] is None else
                         figures[name] <= goal if name.startswith(("peak_rss", "rss_growth")) else figures[name] >= goal)
                  for name, goal in targets.items()},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

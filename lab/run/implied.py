"""Implied tick-to-trade of a `lab run`, and where each nanosecond went.

Per trigger (the first order sent for an MD datagram), on one clock:

    t_md               first bit of the MD frame at the host tap             (capture, host-tap)
    kernel_rx          the engine's kernel RX stamp of the datagram          (telemetry)
    app_in, app_out    the engine's TSC stamps, mapped (lab.analysis.correlation)
    kernel_tx          the kernel TX stamp of the order's deciding bytes     (telemetry)
    host_out           first bit at the host tap of the frame completing the order (capture, host-tap)
    arbiter            that order's last byte at the arbiter                 (capture, exchange-tap)
    baseline           t_md + the path time of the whole order sent alone from the host tap
                       at t_md: the impossible zero-latency order (simulated on the order path)

implied tick-to-trade = arbiter - baseline, and it is the sum of the stages

    wire_in               kernel_rx - t_md          the MD frame's wire time, NIC and stack
    kernel_rx_to_app_in   app_in - kernel_rx
    app                   app_out - app_in          book, models, Overseer, gateway
    app_out_to_kernel_tx  kernel_tx - app_out
    nic_tx                host_out - kernel_tx      the NIC's transmit latency
    order_path            arbiter - host_out        the order's deciding frame along the path
    less_baseline_path    -(baseline - t_md)        what the zero-latency order would take

exactly, in integer ns.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from engine.clock import Calibration
from lab.analysis.correlation import causality, envelope, run_calibration
from lab.analysis.measure import MeasureError, MeasureOptions, links_of, measure, read_telemetry_file
from lab.capture.archive import first_path
from lab.percentiles import summarize
from lab.run.runinfo import read_run_info
from lab.run.taps import EXCHANGE_TAP, HOST_TAP, HostLink
from simulator.scenario import parse_scenario

CHAIN = ("t_md", "kernel_rx", "app_in", "decision", "app_out", "kernel_tx", "host_out", "arbiter")
STAGES = ("wire_in", "kernel_rx_to_app_in", "app", "app_out_to_kernel_tx", "nic_tx", "order_path",
          "less_baseline_path")


def first_order_per_trigger(orders: np.ndarray) -> np.ndarray:
    """Telemetry rows of the first order sent for each MD seq, by seq."""
    _seqs, first = np.unique(orders["md_seq"], return_index=True)
    return orders[first]


def implied(host: dict, exchange: dict, orders: np.ndarray, calibration: Calibration, link: HostLink,
            order_l3_header_bytes: int) -> dict[str, np.ndarray]:
    """Per trigger found in all three (host tap, exchange tap, telemetry): the stamps, the stages and
    `implied_tick_to_trade_ns`. host/exchange: lab measure's per-trigger columns for each tap."""
    tel = first_order_per_trigger(orders)
    tel = tel[(tel["kernel_rx_ns"] > 0) & (tel["kernel_tx_ns"] > 0)]      # see unstamped_triggers
    seqs = np.intersect1d(np.intersect1d(host["md_seq"], exchange["md_seq"]), tel["md_seq"].astype(host["md_seq"].dtype))

    def pick(table, column, key="md_seq"):
        return table[column][np.searchsorted(table[key], seqs)] if len(seqs) else np.zeros(0, np.int64)

    host = _sorted(host)
    exchange = _sorted(exchange)
    t = tel[np.searchsorted(tel["md_seq"], seqs)] if len(seqs) else tel[:0]
    whole_order = t["order_bytes"].astype(np.int64) + t["prefix_bytes"] + order_l3_header_bytes
    stamps = {
        "t_md": pick(host, "t_md_ns"),
        "kernel_rx": t["kernel_rx_ns"].astype(np.int64),
        "app_in": calibration.to_ns(t["app_in_tsc"]),
        "decision": calibration.to_ns(t["decision_tsc"]),
        "app_out": calibration.to_ns(t["app_out_tsc"]),
        "kernel_tx": t["kernel_tx_ns"].astype(np.int64),
        "host_out": pick(host, "order_last_frame_first_bit_ns"),
        "arbiter": pick(exchange, "order_last_frame_first_bit_ns"),
    }
    baseline = stamps["t_md"] + link.order_path_ps(whole_order) // 1000
    stages = {
        "wire_in": stamps["kernel_rx"] - stamps["t_md"],
        "kernel_rx_to_app_in": stamps["app_in"] - stamps["kernel_rx"],
        "app": stamps["app_out"] - stamps["app_in"],
        "app_out_to_kernel_tx": stamps["kernel_tx"] - stamps["app_out"],
        "nic_tx": stamps["host_out"] - stamps["kernel_tx"],
        "order_path": stamps["arbiter"] - stamps["host_out"],
        "less_baseline_path": stamps["t_md"] - baseline,
    }
    return {"md_seq": seqs, "venue": t["venue"].astype(np.int64), **{f"{k}_ns": v for k, v in stamps.items()},
            "baseline_arrival_ns": baseline, **{f"{k}_ns": v for k, v in stages.items()},
            "implied_tick_to_trade_ns": stamps["arbiter"] - baseline}


def unstamped_triggers(orders: np.ndarray) -> int:
    """Triggers whose order lacks a kernel RX or TX stamp (the kernel gave none): left out of the rows."""
    tel = first_order_per_trigger(orders)
    return int(np.count_nonzero((tel["kernel_rx_ns"] <= 0) | (tel["kernel_tx_ns"] <= 0)))


def _sorted(table: dict) -> dict:
    order = np.argsort(table["md_seq"], kind="stable")
    return {name: values[order] for name, values in table.items()}


@dataclass
class RunMeasurement:
    """A `lab run` capture and its telemetry, measured: per-trigger rows and the JSON figures."""
    rows: dict[str, np.ndarray]
    figures: dict


def measure_run(pcap, telemetry, host: dict | None = None, options: MeasureOptions | None = None) -> RunMeasurement:
    """host: the host tap's per-trigger columns when the caller has measured it already."""
    info = read_run_info(first_path(pcap))     # several files: the first one's run info
    if info is None:
        raise MeasureError(f"{pcap}: not a capture written by lab run (no run info); --telemetry needs one")
    orders, _engine_calibration, meta = read_telemetry_file(telemetry)
    options = replace(options or MeasureOptions(), per_trigger_sink=None, progress=None, links=links_of(orders))
    if host is None:
        host = measure(pcap, replace(options, interface=HOST_TAP)).per_trigger
    exchange = measure(pcap, replace(options, interface=EXCHANGE_TAP)).per_trigger
    calibration, clock = run_calibration(info["clock_samples"]["start"], info["clock_samples"]["end"])
    link = HostLink(parse_scenario(info["scenario_toml"], info["scenario"]))
    rows = implied(host, exchange, orders, calibration, link, info["order_l3_header_bytes"])
    figures = {
        "telemetry": {"file": str(telemetry), "strategy": meta.get("strategy"), "orders": int(len(orders)),
                      "triggers": int(len(rows["md_seq"])), "unstamped_triggers": unstamped_triggers(orders)},
        "scenario": info["scenario"],
        "implied_tick_to_trade_ns": summarize(rows["implied_tick_to_trade_ns"]),
        "decomposition_ns": {stage: {key: summarize(rows[f"{stage}_ns"])[key] for key in ("p50", "p99", "mean")}
                             for stage in STAGES},
        "correlation": {**clock, **causality({name: rows[f"{name}_ns"] for name in CHAIN}),
                        "kernel_rx_to_app_in_envelope": envelope(rows["kernel_rx_ns"], rows["app_in_ns"])},
    }
    return RunMeasurement(rows, figures)

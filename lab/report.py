"""The demo's one-page HTML report, and its real-engine figure.

The report is one static file beside its PNGs (relative links), so the folder can be
zipped, mailed or opened from disk in any browser.
"""
from __future__ import annotations

import html
import os
import time

from lab.analysis.exports import open_private

NS_PER_US = 1000                    # display only
STAGE_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1")


def _us(ns) -> str:
    return "-" if ns is None else f"{ns / NS_PER_US:,.1f}"


class Html(str):
    """A table cell that is markup already (a link), not text to escape."""


def _cell(value) -> str:
    return value if isinstance(value, Html) else html.escape(str(value))


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(path: str, out: str, caption: str) -> str:
    name = os.path.relpath(path, out)
    return (f'<figure><a href="{html.escape(name)}"><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
            f"</a><figcaption>{caption}</figcaption></figure>")


def _link(path: str, out: str) -> Html:
    name = html.escape(os.path.relpath(path, out))
    return Html(f'<a href="{name}">{name}</a>')


def plot_real(figures: dict[str, dict], path: str) -> None:
    """A waterfall per real run: each stage's p50, from t_MD to the implied tick-to-trade. The order's path
    and the baseline's are netted into one step (what speculation saved on the way), so the host's own
    microseconds stay visible beside the channel's milliseconds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(figures)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), squeeze=False)
    for n, (ax, name) in enumerate(zip(axes[0], names)):
        stages = {stage: v["p50"] / NS_PER_US for stage, v in figures[name]["decomposition_ns"].items()}
        steps = [(label, stages.pop(stage)) for stage, label in (("wire_in", "MD frame in"),
                                                                  ("kernel_rx_to_app_in", "kernel -> app"),
                                                                  ("app", "engine"),
                                                                  ("app_out_to_kernel_tx", "app -> kernel TX"),
                                                                  ("nic_tx", "NIC tx"))]
        steps.append(("order path - baseline", stages.pop("order_path") + stages.pop("less_baseline_path")))
        level, ends = 0.0, [0.0]
        for i, ((label, value), colour) in enumerate(zip(steps, STAGE_COLOURS)):
            ax.barh(i, value, left=level, color=colour)
            ax.annotate(f"{value:+,.1f}", (max(level, level + value), i), xytext=(4, -3), textcoords="offset points",
                        fontsize=8)
            level += value
            ends.append(level)
        span = max(ends) - min(ends)
        ax.set_xlim(min(ends) - 0.05 * span, max(ends) + 0.25 * span)
        implied = figures[name]["implied_tick_to_trade_ns"]["p50"] / NS_PER_US
        ax.axvline(0, color="grey", lw=0.8)
        ax.axvline(implied, color="black", lw=1.5, ls="--")
        ax.set_yticks(range(len(steps)), [label for label, _ in steps] if n == 0 else [])
        ax.invert_yaxis()
        ax.set_xlabel("us from t_MD (p50 of each stage)")
        ax.set_title(f"{name}: implied p50 {implied:,.1f} us")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("real engine, krx-2008: where the implied tick-to-trade comes from")
    fig.tight_layout()
    with open_private(path, binary=True) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_report(result) -> str:
    """result: lab.demo.DemoResult. Writes result.report (owner-only) and returns its path."""
    out = result.out
    krx_rows = [[name, _us(ps // 1000)] for name, ps in result.krx.items()]
    parts = [
        "<h1>wirelab demo</h1>",
        f"<p class=meta>{html.escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}. Every figure below was computed "
        "or measured by this run of <code>lab demo</code>; the commands to reproduce each are at the end.</p>",
        "<h2>1. Negative latency: the seed's KRX case</h2>",
        "<p>A 500-byte market-data packet crawls from the exchange through a 256 kb/s channel to the trading "
        "host, and the order crawls back the same way. An order counts when its <em>last</em> byte reaches "
        "the exchange. Sending the order's first 20 bytes before the decision (they do not depend on it) "
        "saves their 625 us at the slow channel. So the order arrives 565 us <em>earlier</em> than an "
        "impossible order sent the instant the market data's first bit reached the host. "
        "That is the <em>implied tick-to-trade</em>, and below zero is negative latency: "
        "40 us waiting for the frame + 20 us processing - 625 us saved = <strong>-565 us</strong>. "
        "The simulator finds -569.8 us: the same 20 bytes also save 1.6 us on each of three 100 Mb/s "
        "store-and-forward hops.</p>",
        _figure(result.files["spacetime"], out,
                "Space-time diagram: time runs left to right, places top to bottom (market-data path to the host, "
                "then the order path to the exchange). Each band is one frame, from its first bit to its last bit "
                "at every place. The tcp-prefix order's last band ends left of the plain order's: that gap is the "
                "saving."),
        _table(["strategy (krx-2008, simulated)", "implied tick-to-trade (us)"], krx_rows),
        "<h2>2. Speculative-send strategies compared (simulation)</h2>",
        "<p>Each strategy answers the same market data through the same simulated network. The implied "
        "tick-to-trade is shown as a distribution over many triggers, because orders queue behind each other. "
        "Each strategy also has costs: extra bytes on the wire, frames killed on purpose, time the link is busy, "
        "and messages started but never completed. The sweeps show what the savings depend on: line rate, "
        "prefix size, early-read offset, and the number of store-and-forward hops.</p>",
    ]
    for scenario, document in result.comparisons.items():
        rows = []
        for s in document["strategies"]:
            implied = s["implied_tick_to_trade_ns"]
            costs = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in s["costs"].items())
            rows.append([s["name"], _us(implied["p50"]), _us(implied["p99"]), _us(s.get("savings_ns")), costs])
        parts += [f"<h3>{html.escape(scenario)}</h3>",
                  _figure(result.files[f"compare-{scenario}"], out,
                          f"{html.escape(scenario)}: left, the distribution of implied tick-to-trade per strategy "
                          "(further left is faster; left of zero is negative latency); the other panels, how the "
                          "savings change with line rate, prefix size, early-read offset and hop count."),
                  _table(["strategy", "implied p50 (us)", "implied p99 (us)", "saving vs none, p50 (us)", "costs"],
                         rows),
                  f"<p class=files>data: {_link(os.path.join(out, f'compare-{scenario}.json'), out)}</p>"]
    parts.append("<h2>3. The real engine through the simulated KRX wire</h2>")
    if result.real:
        parts.append(
            "<p>The real engine ran on this machine. The venue fed it market data over loopback, at the instants "
            "the KRX network says each packet's last bit reaches the host. The engine traded against the venue's "
            "matching engine over TCP. A kernel capture of both directions became a hardware-style pcapng with a "
            "tap at the host and a tap at the exchange. The bars split each strategy's implied tick-to-trade "
            "into stages: the market-data frame's wire time, the kernel, the engine itself, the path of the "
            "order's deciding bytes, and minus the path of the zero-latency baseline. With "
            "<code>tcp-prefix</code> the real engine's 16-byte prefix saves 500 us on the 256 kb/s channel, "
            "far more than the engine spends deciding.</p>"
            + ("<p class=skipped>Without CAP_NET_RAW this run's capture was rebuilt from the sockets' own kernel "
               "stamps: the engine's ACKs and the venue's replies are not in it (see docs/run.md).</p>"
               if result.capture == "sockets" else ""))
        parts.append(_figure(result.files["real"], out, "Real engine: each stage's p50 as a step from t_MD "
                             "(the MD frame's first bit at the host). The last step nets the order's path against "
                             "the zero-latency baseline's: what speculation saved on the way. The dashed line is the "
                             "p50 implied tick-to-trade; trigger by trigger the stages sum to it exactly."))
        rows = []
        for strategy, figures in result.real.items():
            implied, clock = figures["implied_tick_to_trade_ns"], figures["correlation"]
            rows.append([strategy, figures["telemetry"]["triggers"], _us(implied["min"]), _us(implied["p50"]),
                         _us(implied["p99"]), _us(implied["max"]), f"{clock['residual_p99_ns']:.0f}",
                         f"{clock['drift_ppm']:.3f}", clock["causality_violations"],
                         _link(result.files[f"run-{strategy}"], out)])
        parts.append(_table(["strategy", "triggers", "min (us)", "p50 (us)", "p99 (us)", "max (us)",
                             "clock residual p99 (ns)", "drift (ppm)", "causality violations", "capture"], rows))
    else:
        parts.append(f"<p class=skipped>The real-engine run is missing: {html.escape(result.real_skipped or '')}. "
                     "Run <code>lab demo</code> without <code>--no-real</code> to see it.</p>")
    parts += [
        "<h2>Reproduce</h2><pre>lab simulate krx-2008 --plot krx.png\n"
        "lab compare --scenario krx-2008 --plot compare.png --json\n"
        "lab run --scenario krx-2008 --strategy tcp-prefix --models imbalance-taker --out run.pcapng\n"
        "lab measure --pcap run.pcapng --telemetry run.tel</pre>",
    ]
    page = ("<!doctype html><html lang=en><head><meta charset=utf-8><title>wirelab demo</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}"
            "img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}figcaption{font-size:.9em;color:#555}"
            "table{border-collapse:collapse;margin:.8em 0;font-size:.9em}"
            "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th:first-child,td:first-child"
            "{text-align:left}.meta,.files{color:#666;font-size:.9em}.skipped{background:#fff4e5;padding:.6em}"
            "</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    with open_private(result.report) as f:
        f.write(page)
    return result.report

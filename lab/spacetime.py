"""Space-time diagrams: where every bit is (as in the seed's figures).

Points run down the y axis in travel order: the market-data path to the host,
then the order path to the arbiter. Time runs along x. Each frame is a band
from its first bit to its last bit at every point.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402

from simulator.strategies import FrameTimeline, Simulation  # noqa: E402

PS_PER_US = 1e6  # plotting only: axis labels in microseconds


def _band(ax, frame: FrameTimeline, y0: int, colour: str, label: str, hatch: str | None = None):
    ys = [y0 + i for i in range(len(frame.points))]
    firsts = [p.first_bit_ps / PS_PER_US for p in frame.points]
    lasts = [p.last_bit_ps / PS_PER_US for p in frame.points]
    if len(ys) == 1:
        ax.plot([firsts[0], lasts[0]], [ys[0], ys[0]], color=colour, lw=6, label=label)
        return
    vertices = list(zip(firsts, ys)) + list(zip(reversed(lasts), reversed(ys)))
    ax.add_patch(Polygon(vertices, closed=True, facecolor=colour, edgecolor=colour, alpha=0.55,
                         hatch=hatch, label=label))


def plot_simulation(sim: Simulation, path: str, strategies: list[str] | None = None) -> None:
    """Write a PNG: one panel per strategy, each showing the MD frame and the order's frames."""
    names = strategies or list(sim.strategies) or [None]
    md = sim.flows["md"][0]
    order_points = sim.flows["order"][0].points if "order" in sim.flows else []
    labels = [p.name for p in md.points] + [p.name for p in order_points]
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.2 + 1.9 * len(names) + 0.15 * len(labels)),
                             sharex=True, squeeze=False)
    colours = ["tab:orange", "tab:green", "tab:purple", "tab:red"]
    for ax, name in zip(axes[:, 0], names):
        _band(ax, md, 0, "tab:blue", "market data")
        if name is not None:
            result = sim.strategies[name]
            base = sim.flows["order"][0]
            for i, frame in enumerate(result.frames):
                _band(ax, frame, len(md.points), colours[i % len(colours)], f"{name}: {frame.label}")
            if name != "none":
                _band(ax, base, len(md.points), "lightgrey", "none: order", hatch="//")
            ax.set_title(f"{name}: implied tick-to-trade {result.implied_tick_to_trade_ps / PS_PER_US:.3f} us",
                         fontsize=10, loc="left")
        ax.axvline(sim.t_md_ps / PS_PER_US, color="k", ls="--", lw=0.8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.autoscale(axis="x")
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("time (us) from the market-data frame's first bit at the first point; dashed: t_MD")
    fig.suptitle(f"{sim.scenario.name}: where is each bit", fontsize=11)
    fig.tight_layout()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        fig.savefig(out, format="png", dpi=110)
    plt.close(fig)

"""The latency plot: a PNG with a histogram and a CDF."""
from __future__ import annotations

import numpy as np

from lab.analysis.exports import open_private
from lab.percentiles import PERCENTILES, nearest_rank


def write_plot(path, values_ns: np.ndarray, title: str) -> None:
    """A PNG: the latency histogram up to p99.9 (left) and the whole CDF on a log axis (right), in us."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.sort(np.asarray(values_ns, dtype=np.int64))
    us = values / 1000.0
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4.2))
    if values.size:
        edge = nearest_rank(values, PERCENTILES["p99_9"]) / 1000.0
        shown = us[us <= edge]
        hist.hist(shown, bins=min(200, max(10, int(np.sqrt(shown.size)))), color="tab:blue")
        for key in ("p50", "p99"):
            mark = nearest_rank(values, PERCENTILES[key]) / 1000.0
            hist.axvline(mark, color="k", ls="--", lw=0.8)
            hist.annotate(key, (mark, 0.95), xycoords=("data", "axes fraction"), fontsize=8)
        hist.set_title(f"histogram up to p99.9 ({values.size - shown.size} above not shown)", fontsize=10,
                       loc="left")
        cdf.plot(us, np.arange(1, values.size + 1) / values.size, color="tab:blue", lw=1.2)
        if us[0] > 0:
            cdf.set_xscale("log")
    else:
        for ax in (hist, cdf):
            ax.text(0.5, 0.5, "no matched triggers", ha="center", transform=ax.transAxes)
    hist.set_xlabel("tick-to-trade (us)")
    hist.set_ylabel("triggers")
    cdf.set_xlabel("tick-to-trade (us)")
    cdf.set_ylabel("fraction of triggers <= x")
    cdf.set_ylim(0, 1.0)
    cdf.set_title("CDF", fontsize=10, loc="left")
    for ax in (hist, cdf):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with open_private(path, binary=True) as out:
        fig.savefig(out, format="png", dpi=110)
    plt.close(fig)

"""Statistics against numpy and hand values; .hgrm against the hdrhistogram package; exports."""
import io

import numpy as np
import pandas as pd
import pytest
from hdrh.histogram import HdrHistogram

from lab.analysis.exports import ExportError, write_table
from lab.analysis.hgrm import HOUR_NS, HdrLayout, write_hgrm
from lab.analysis.plots import write_plot
from lab.percentiles import summarize


def test_summary_by_hand():
    values = np.array([5, 1, 4, 2, 3, 10, 6, 9, 7, 8])
    s = summarize(values)
    # nearest rank: p50 of 10 values is rank 5, p90 rank 9, p99 and above rank 10
    assert s == {"count": 10, "min": 1, "mean": 6, "p50": 5, "p90": 9, "p99": 10, "p99_9": 10,
                 "p99_99": 10, "max": 10}                  # mean 5.5 rounds to 6


def test_mean_rounds_to_nearest_ns():
    assert summarize(np.array([1, 2, 2]))["mean"] == 2       # 1.67
    assert summarize(np.array([1, 1, 2]))["mean"] == 1       # 1.33
    assert summarize(np.array([-3, -4]))["mean"] == -3       # -3.5 rounds up


def test_summary_against_numpy_inverted_cdf():
    values = np.random.default_rng(1).lognormal(9, 0.6, 123_457).astype(np.int64)
    s = summarize(values)
    for key, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999), ("p99_99", 0.9999)):
        assert s[key] == int(np.percentile(values, q * 100, method="inverted_cdf")), key
    assert (s["min"], s["max"], s["count"]) == (values.min(), values.max(), values.size)
    assert s["mean"] == int(np.floor(values.astype(np.float64).mean() + 0.5))


def test_percentile_rank_is_exact_at_the_boundary():
    values = np.arange(1, 10_001)                            # p99.99 of 10000 values: rank 9999 exactly
    assert summarize(values)["p99_99"] == 9999
    assert summarize(values)["p99_9"] == 9990


def test_empty_summary():
    s = summarize(np.zeros(0, np.int64))
    assert s["count"] == 0 and s["p50"] is None and s["max"] is None


def reference_hgrm(values) -> str:
    histogram = HdrHistogram(1, max(HOUR_NS, int(max(values, default=0))), 3)
    for value in values:
        histogram.record_value(int(value))
    out = io.BytesIO()
    histogram.output_percentile_distribution(out, 1)
    return out.getvalue().decode()


@pytest.mark.parametrize("name", ["lognormal", "one", "zeros", "spread", "huge", "empty"])
def test_hgrm_matches_the_hdrhistogram_package(tmp_path, name):
    rng = np.random.default_rng(2)
    values = {
        "lognormal": rng.lognormal(np.log(8000), 0.5, 5000).astype(np.int64),
        "one": np.array([7]),
        "zeros": np.zeros(4, np.int64),
        "spread": np.array([1, 2, 3, 1000, 2047, 2048, 5_000_000]),
        "huge": np.array([10, 2 * HOUR_NS]),                # beyond an hour: the range grows
        "empty": np.zeros(0, np.int64),
    }[name]
    path = tmp_path / "t.hgrm"
    write_hgrm(path, values)
    assert path.read_text() == reference_hgrm(values)
    assert path.stat().st_mode & 0o777 == 0o600


def test_hgrm_refuses_negative_latencies(tmp_path):
    with pytest.raises(ExportError, match="negative"):
        write_hgrm(tmp_path / "n.hgrm", np.array([5, -1]))


def test_csv_round_trip(tmp_path):
    columns = {"md_seq": np.array([1, 2]), "tick_to_trade_ns": np.array([8123, 9001])}
    path = tmp_path / "t.csv"
    write_table(path, columns)
    frame = pd.read_csv(path)
    assert frame.to_dict("list") == {"md_seq": [1, 2], "tick_to_trade_ns": [8123, 9001]}
    assert path.stat().st_mode & 0o777 == 0o600


def test_parquet_needs_pyarrow(tmp_path):
    columns = {"tick_to_trade_ns": np.array([1, 2])}
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ExportError, match="pyarrow"):
            write_table(tmp_path / "t.parquet", columns, parquet=True)
    else:
        write_table(tmp_path / "t.parquet", columns, parquet=True)
        assert pd.read_parquet(tmp_path / "t.parquet")["tick_to_trade_ns"].tolist() == [1, 2]


def test_plot_is_a_png(tmp_path):
    path = tmp_path / "p.png"
    write_plot(path, np.random.default_rng(3).integers(5000, 20000, 2000), "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_mode & 0o777 == 0o600
    write_plot(tmp_path / "empty.png", np.zeros(0, np.int64), "nothing")


def test_existing_output_file_becomes_owner_only(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("old")
    path.chmod(0o644)
    write_table(path, {"a": np.array([1])})
    assert path.stat().st_mode & 0o777 == 0o600


def test_hdr_layout_matches_the_package_bucketing():
    layout = HdrLayout(HOUR_NS)
    reference = HdrHistogram(1, HOUR_NS, 3)
    values = np.unique(np.concatenate([np.arange(0, 5000), np.random.default_rng(4).integers(0, HOUR_NS, 2000)]))
    mine = layout.counts_index(values)
    assert mine.tolist() == [reference._counts_index_for(int(v)) for v in values]
    assert (layout.bucket_count, layout.sub_bucket_count) == (reference.bucket_count, reference.sub_bucket_count)

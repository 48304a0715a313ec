"""`lab scenarios` and `lab simulate` as a user runs them (`lab demo`: test_demo.py)."""
import json

import pytest


def test_scenarios_one_line_each(lab):
    result = lab("scenarios")
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["bats-2009-1g", "chicago-nj", "fpga-10g", "krx-2008",
                                                   "modern-10g"]


def test_simulate_json_schema_and_relative_times(lab):
    result = lab("simulate", "krx-2008", "--strategy", "none", "--strategy", "tcp-prefix", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["scenario"] == "krx-2008"
    md = doc["flows"]["md"]["points"]
    assert md[0]["first_bit_ps"] == 0                              # relative to the first point
    assert {"name", "first_bit_ps", "last_bit_ps"} <= set(md[0])
    assert doc["flows"]["order"]["points"][-1]["name"] == "krx-gateway"
    assert set(doc["strategies"]) == {"none", "tcp-prefix"}
    prefix = doc["strategies"]["tcp-prefix"]
    assert prefix["implied_tick_to_trade_ps"] < 0 < doc["strategies"]["none"]["implied_tick_to_trade_ps"]
    assert prefix["arbiter_arrival_ps"] - prefix["baseline_arrival_ps"] == prefix["implied_tick_to_trade_ps"]
    d = prefix["decomposition"]
    assert d["wait_for_frame_ps"] + d["processing_ps"] + d["host_tx_ps"] - sum(d["savings_ps"].values()) \
        == prefix["implied_tick_to_trade_ps"]


def test_simulate_table_and_plot(lab, tmp_path):
    out = tmp_path / "st.png"
    result = lab("simulate", "modern-10g", "--plot", out)
    assert result.returncode == 0, result.stderr
    assert "tcp-prefix+early-read" in result.stdout and "implied" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("args", [
    ["simulate"],
    ["simulate", "krx-2008", "--strategy", "teleport"],
    ["simulate", "krx-2008", "--strategy", "tcp-prefix+eth-abort"],
    ["simulate", "no-such-scenario"],
    ["simulate", "krx-2008", "--plot", "diagram.svg"],
    ["simulate", "krx-2008", "--bogus"],
    ["frobnicate"],
])
def test_bad_flags_one_line_exit_2(lab, args, tmp_path):
    result = lab(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_subcommands_have_help(lab):
    for command in ("scenarios", "simulate", "demo"):
        result = lab(command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout

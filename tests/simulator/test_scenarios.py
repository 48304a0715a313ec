"""Scenario files: built-ins load, minimal files are valid, bad files name the file and key."""
import pytest

from simulator.errors import ScenarioError
from simulator.scenario import builtin_names, load_scenario, parse_scenario
from simulator.units import UnitError, parse_duration, parse_rate

MINIMAL = '[[md_path]]\ntype = "link"\nrate = "100Mbps"\n[market_data]\npayload_bytes = 472\n'


def test_five_builtins_load():
    assert builtin_names() == ["bats-2009-1g", "chicago-nj", "fpga-10g", "krx-2008", "modern-10g"]
    for name in builtin_names():
        assert load_scenario(name).name == name


def test_one_path_one_frame_is_valid():
    s = parse_scenario(MINIMAL, "minimal.toml")
    assert s.order_path is None and len(s.md_path.hops) == 1


def test_units():
    assert parse_rate("10.3125Gbps") == 10_312_500_000
    assert parse_rate("256kbps") == 256_000
    assert parse_duration("1.5ms") == 1_500_000_000
    assert parse_duration("50ns") == 50_000
    assert parse_duration("18.4ns") == 18_400
    for bad in ("fast", "10 parsecs", "-5us", "0.5ps"):
        with pytest.raises(UnitError):
            parse_duration(bad)
    for bad in ("0bps", "1.5bps", "100", "100Mbq"):
        with pytest.raises(UnitError):
            parse_rate(bad)


BAD = {
    "unknown type": ('[[md_path]]\ntype = "router"\nrate = "1Gbps"\n[market_data]\npayload_bytes = 1\n',
                     "md_path[0].type"),
    "missing rate": ('[[md_path]]\ntype = "link"\n[market_data]\npayload_bytes = 1\n', "md_path[0].rate"),
    "negative length": ('[[md_path]]\ntype = "link"\nrate = "1Gbps"\nlength_km = -3\n'
                        '[market_data]\npayload_bytes = 1\n', "md_path[0].length_km"),
    "bad unit": ('[[md_path]]\ntype = "link"\nrate = "1Gbps"\ndelay = "5 furlongs"\n'
                 '[market_data]\npayload_bytes = 1\n', "md_path[0].delay"),
    "toml syntax": ('[[md_path]\ntype = "link"\n', "toml"),
    "unknown key": (MINIMAL + 'colour = "red"\n', "market_data.colour"),
    "prefix too long": (MINIMAL.replace("[market_data]", '[[order_path]]\ntype="link"\nrate="1Gbps"\n[market_data]')
                        + '[order]\npayload_bytes = 10\nprefix_bytes = 10\n', "order.prefix_bytes"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_scenario_names_file_and_key(case):
    text, key = BAD[case]
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "bad.toml")
    assert info.value.source == "bad.toml" and info.value.key == key


@pytest.mark.parametrize("case", BAD)
def test_bad_scenario_cli_one_line_exit_2(case, lab, tmp_path):
    text, key = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = lab("simulate", path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and key in lines[0]
    assert "Traceback" not in result.stderr

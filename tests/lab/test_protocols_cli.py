"""`lab protocols`: every registered protocol with its framing and message tables, read back
against the declarations themselves (a table appears as its layout renders it)."""
import json

import pytest

from engine.protocol import protocols
from lab.cli import main


def test_the_table_view_lists_every_protocol_and_every_message(capsys):
    assert main(["protocols"]) == 0
    out = capsys.readouterr().out
    for protocol in protocols():
        assert f"{protocol.name}: {protocol.title}" in out
        assert protocol.framing in out
        for layout in protocol.layouts:
            assert f"{layout.name} ({layout.size} bytes)" in out
            assert "\n".join("  " + line for line in layout.table().splitlines()) in out


def test_json_names_the_protocols_the_cli_choices_take(capsys):
    assert main(["protocols", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    by_role = {}
    for p in document["protocols"]:
        by_role.setdefault(p["role"], []).append(p["name"])
    assert by_role == {"market data": ["wm", "itch50"], "order entry": ["binary", "fix", "ouch42"]}
    binary = next(p for p in document["protocols"] if p["name"] == "binary")
    assert [(m["name"], m["bytes"]) for m in binary["messages"]] == \
        [("NewOrder", 48), ("Cancel", 32), ("Ack", 32), ("Fill", 64), ("Reject", 24)]


def test_a_bad_flag_is_one_line_and_status_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["protocols", "--tables"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [
    ["synth", "--out", "x.pcap", "--triggers", "1", "--md", "nope"],
    ["synth", "--out", "x.pcap", "--triggers", "1", "--orders", "ouch"],
    ["measure", "--pcap", "x.pcap", "--md", "binary"],
    ["measure", "--pcap", "x.pcap", "--orders", "wm"],
    ["measure", "--pcap", "x.pcap", "--match", "automatic"],
    ["run", "--strategy", "none", "--md", "itch"],
])
def test_a_protocol_flag_that_names_no_such_protocol_is_one_line_and_status_2(capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1


def test_synth_telemetry_must_not_overwrite_the_capture(tmp_path, capsys):
    out = tmp_path / "x.pcap"
    code = main(["synth", "--out", str(out), "--triggers", "1", "--telemetry", str(out)])
    assert code == 2 and "different files" in capsys.readouterr().err and not out.exists()

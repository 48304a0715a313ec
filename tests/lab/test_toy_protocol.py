"""A new order protocol is one declaration: a toy one, registered here and nowhere else, is
written by `lab synth` and measured by `lab measure` to the nanosecond of the synth's truth."""
import json

import numpy as np
import pandas as pd
import pytest

from engine.protocol import register
from engine.protocol.layout import Field, Layout
from engine.protocol.registry import OrderProtocol, unregister
from engine.protocol.stream import StreamFrames
from lab.cli import main
from lab.synth import SynthConfig, synthesize, write_capture, write_truth

ORDER = Layout("ToyOrder", 32, [Field("magic", 0, "S2", 'b"TY"'), Field("msg_type", 2, "u1", 'b"N"'),
                                Field("qty", 4, ">u4", ""), Field("client_order_id", 8, ">u8", ""),
                                Field("trigger_seq", 16, ">u8", ""), Field("price", 24, ">i8", "")])
REPLY = Layout("ToyReply", 16, [Field("magic", 0, "S2", 'b"TY"'), Field("msg_type", 2, "u1", 'b"A"'),
                                Field("client_order_id", 8, ">u8", "")])
SIZES = {ord("N"): ORDER.size, ord("A"): REPLY.size}


class Toy(OrderProtocol):
    name, title, framing = "toy", "a test's own order entry", "b'TY', a type byte, one size per type"
    sniff_bytes, prefix_bytes, new_order_bytes, layouts = 3, 8, ORDER.size, (ORDER, REPLY)

    def sniff(self, head):
        return head[:2] == b"TY"

    def frame(self, stream):
        data, at, starts = bytes(stream), 0, []
        while at + 3 <= len(data) and data[at:at + 2] == b"TY" and data[at + 2] in SIZES:
            if at + SIZES[data[at + 2]] > len(data):
                break
            starts.append(at)
            at += SIZES[data[at + 2]]
        starts = np.array(starts, np.int64)
        types = np.frombuffer(data, np.uint8)[starts + 2] if starts.size else np.zeros(0, np.uint8)
        return StreamFrames(starts, np.array([SIZES[t] for t in types.tolist()], np.int64), types, at,
                            len(data), None, None)

    def new_orders(self, stream, frames, trigger_tag=None):
        new = np.flatnonzero(frames.msg_type == ord("N"))
        records = np.frombuffer(bytes(stream), np.uint8)
        rows = np.stack([records[o:o + ORDER.size] for o in frames.offset[new].tolist()] or
                        [np.zeros(ORDER.size, np.uint8)])[:new.size].copy().view(ORDER.dtype).ravel()
        return new, rows["qty"].astype(np.int64), rows["trigger_seq"].astype(np.int64)

    def synth_orders(self, order, decided_ns, first_bit_ns):
        records = np.zeros(len(decided_ns), ORDER.dtype)
        records["magic"], records["msg_type"] = b"TY", ord("N")
        for name in ("qty", "client_order_id", "trigger_seq", "price"):
            records[name] = order[name]
        return records.view(np.uint8)

    def synth_replies(self, order, rejected, filled, venue_ts_ns):
        replies = np.zeros(int(len(rejected) + filled.sum()), REPLY.dtype)
        replies["magic"], replies["msg_type"] = b"TY", ord("A")
        replies["client_order_id"] = np.repeat(order["client_order_id"], 1 + filled)
        return replies.view(np.uint8), np.full(len(rejected), REPLY.size), np.where(filled, REPLY.size, 0)


@pytest.fixture
def toy():
    register(Toy())
    yield
    unregister("toy")


def test_a_capture_written_with_a_toy_protocol_measures_exactly(tmp_path, capsys, toy):
    synthesis = synthesize(SynthConfig(triggers=300, seed=4, order_format="toy"))
    capture, truth = tmp_path / "toy.pcapng", tmp_path / "truth.csv"
    write_capture(synthesis, str(capture), "pcapng", "hardware")
    write_truth(synthesis, str(truth))
    assert main(["measure", "--pcap", str(capture), "--csv", str(tmp_path / "rows.csv"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = pd.read_csv(truth).sort_values("md_seq")
    rows = pd.read_csv(tmp_path / "rows.csv").sort_values("md_seq")
    assert report["matched"] == 300 and report["unmatched_orders"] == 0
    assert rows["md_seq"].tolist() == expected["md_seq"].tolist()
    assert rows["tick_to_trade_ns"].tolist() == expected["tick_to_trade_ns"].tolist()


def test_the_toy_is_listed_and_taken_by_the_cli_by_name(tmp_path, capsys, toy):
    assert main(["protocols", "--json"]) == 0
    assert "toy" in [p["name"] for p in json.loads(capsys.readouterr().out)["protocols"]]
    assert main(["synth", "--out", str(tmp_path / "x.pcap"), "--triggers", "5", "--orders", "toy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["orders"] == "toy"

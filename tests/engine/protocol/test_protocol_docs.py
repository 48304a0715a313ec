"""docs/protocol.md agrees with the layouts in the code, and its examples decode."""
import re
from pathlib import Path

from engine.protocol import docs, fix, md, orders
from engine.protocol.registry import protocols

DOC = (Path(__file__).parents[3] / "docs" / "protocol.md").read_text()


def test_the_generated_tables_are_what_the_declarations_say():
    """Regenerate with `python -m engine.protocol.docs docs/protocol.md`."""
    assert docs.render(DOC) == DOC
    keys = {m.group("key") for m in docs.REGION.finditer(DOC)}
    assert keys == {"protocols"} | {f"{p.name}/{layout.name}" for p in protocols() for layout in p.layouts}


def test_every_layout_table_is_in_the_docs():
    layouts = [md.HEADER, md.UPDATE, md.TRADE, *orders.LAYOUTS.values(),
               fix.NEW_ORDER_SINGLE, fix.ORDER_CANCEL_REQUEST, fix.EXECUTION_REPORT]
    for layout in layouts:
        assert layout.table() in DOC, layout.name
    for constant in ("NEW_ORDER_SIZE", "NEW_ORDER_PREFIX_BYTES", "NEW_ORDER_TRIGGER_SEQ_OFFSET"):
        assert f"`{constant} = {getattr(orders, constant)}`" in DOC
    for constant in ("NEW_ORDER_SINGLE_SIZE", "NEW_ORDER_SINGLE_PREFIX_BYTES",
                     "NEW_ORDER_SINGLE_TRIGGER_SEQ_OFFSET", "ORDER_CANCEL_REQUEST_SIZE"):
        assert f"`{constant} = {getattr(fix, constant)}`" in DOC


def test_the_examples_decode():
    blocks = re.findall(r"```text\n(.*?)\n```", DOC, flags=re.DOTALL)
    dumps = [bytes.fromhex("".join(line[6:53] for line in b.splitlines()))
             for b in blocks if re.match(r"0000  [0-9a-f]{2} ", b)]
    fix_messages = [b.replace("|", "\x01").encode() for b in blocks if b.startswith("8=FIX")]
    assert len(dumps) == 7 and len(fix_messages) == 2
    assert md.decode_md(dumps[0]).seq == 1001
    assert [type(orders.decode_order(d)).__name__ for d in dumps[1:6]] == \
        ["NewOrder", "Cancel", "Ack", "Fill", "Reject"]
    assert orders.decode_order(dumps[1]).trigger_seq == 1001
    assert fix_messages[0].startswith(dumps[6])
    assert fix.decode_fix(fix_messages[0]).trigger_seq == 1001
    assert fix.decode_fix(fix_messages[1]).exec_type == "2"

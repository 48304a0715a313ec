"""The generated parts of docs/protocol.md, from the registered protocols' declarations.

The page's prose is written by hand; its tables are not. Each region between
`<!-- generated: KEY -->` and `<!-- end generated -->` holds what `region(KEY)` renders:
`protocols` (every registered protocol, one row each) or `NAME/MESSAGE` (one message's table).
Rewrite them after changing a declaration:

    python -m engine.protocol.docs docs/protocol.md

and a test (tests/engine/protocol/test_protocol_docs.py) keeps the page so.
"""
from __future__ import annotations

import re
import sys

from engine.protocol.registry import MdProtocol, protocols

REGION = re.compile(r"(<!-- generated: (?P<key>[^>]+?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)


def role(protocol) -> str:
    return "market data" if isinstance(protocol, MdProtocol) else "order entry"


def describe(protocol) -> dict:
    """A protocol's declaration as data: what `lab protocols --json` prints."""
    return {"name": protocol.name, "role": role(protocol), "title": protocol.title,
            "transport": protocol.transport, "framing": protocol.framing,
            "messages": [{"name": layout.name, "bytes": layout.size} for layout in protocol.layouts]}


def summary() -> str:
    rows = ["| name | role | transport | framing | messages |", "|---|---|---|---|---|"]
    for protocol in protocols():
        messages = ", ".join(f"{layout.name} ({layout.size} B)" for layout in protocol.layouts)
        rows.append(f"| `{protocol.name}` | {role(protocol)} | {protocol.transport} | {protocol.framing} | "
                    f"{messages} |")
    return "\n".join(rows)


def region(key: str) -> str:
    if key == "protocols":
        return summary()
    name, _, message = key.partition("/")
    for protocol in protocols():
        if protocol.name == name:
            for layout in protocol.layouts:
                if layout.name == message:
                    return layout.table()
    raise KeyError(f"no generated region {key!r}: no such protocol or message")


def render(text: str) -> str:
    """The page with every generated region rewritten from the declarations."""
    return REGION.sub(lambda m: f"{m.group(1)}{region(m.group('key'))}\n{m.group(4)}", text)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m engine.protocol.docs docs/protocol.md")
    with open(sys.argv[1]) as f:
        page = f.read()
    with open(sys.argv[1], "w") as f:
        f.write(render(page))

"""`lab protocols`: every registered wire protocol, with its transport, framing and message tables."""
from __future__ import annotations

import json

from engine.protocol import protocols
from engine.protocol.docs import describe, role


def register(sub):
    p = sub.add_parser("protocols", help="list the wire protocols, with their message tables",
                       description="List every registered wire protocol (market data and order entry): "
                                   "its name (what --md and --orders take), transport, framing and the "
                                   "fields of each of its messages.")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.json:
        document = {"protocols": [dict(describe(p), messages=[
            {"name": layout.name, "bytes": layout.size, "table": layout.table()} for layout in p.layouts])
            for p in protocols()]}
        print(json.dumps(document, indent=2))
        return 0
    for protocol in protocols():
        print(f"{protocol.name}: {protocol.title} ({role(protocol)} over {protocol.transport})")
        print(f"  framing: {protocol.framing}")
        for layout in protocol.layouts:
            print(f"\n  {layout.name} ({layout.size} bytes)")
            print("\n".join("  " + line for line in layout.table().splitlines()))
        print()
    return 0

"""`lab replay LOG`: re-drive the trade models and the Overseer from a persistence log and
check that they produce the logged order stream, byte for byte (fresh TSC stamps aside).

Exit status: 0 when the streams are identical, 1 when they differ, 2 for a file that is
not a readable, complete log.
"""
from __future__ import annotations

import json

from lab.errors import LabError
from lab.table import render

DIFFER = 1


def register(sub):
    p = sub.add_parser("replay", help="replay a persistence log and compare the order stream",
                       description="Re-drive the trade models and the Overseer from the MarketUpdates and "
                                   "AccountUpdates of an engine's persistence log, in the order the engine "
                                   "saw them, and compare the OrderRequests with the logged ones byte for byte "
                                   "(publish and decision TSC stamps aside). Exit 0 identical, 1 different, "
                                   "2 unreadable log. See docs/telemetry.md.")
    p.add_argument("log", metavar="LOG", help="a log written by the engine's logger (.log.zst)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args) -> int:
    from engine.logger import LogError
    from engine.replay import replay_file
    try:
        result = replay_file(args.log)
    except LogError as exc:
        raise LabError(str(exc)) from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(table(result))
    return 0 if result.identical else DIFFER


def table(result) -> str:
    lost = ", ".join(f"{role} {n}" for role, n in result.missed.items() if n)
    rows = [
        ["engine", f"{result.engine} ({result.mode} mode)"],
        ["log complete", "yes" if result.complete else f"NO ({'missed ' + lost if lost else 'not to the end'})"],
        ["market updates", result.market_updates],
        ["account updates", f"{result.account_updates} ({result.applied} taken in by the Overseer)"],
        ["ordering", result.ordering],
        ["order requests logged", result.logged],
        ["order requests replayed", result.replayed],
        ["matched", result.matched],
        ["mismatched", result.mismatched],
    ]
    text = render(["replay", str(result.log)], rows, "ll")
    first = result.first_mismatch
    if first is not None:
        text += f"\nfirst mismatch: order #{first['index']}, fields {', '.join(first['fields'])}"
        for side in ("logged", "replayed"):
            row = first[side]
            text += f"\n  {side:8}: " + ("(none)" if row is None else
                                        " ".join(f"{name}={row[name]}" for name in first["fields"]))
    return text + "\n" + ("identical" if result.identical else "DIFFERENT")

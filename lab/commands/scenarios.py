"""`lab scenarios`: the built-in scenarios, one line each."""
from __future__ import annotations

import json

from simulator.scenario import builtin_names, load_scenario


def register(sub):
    p = sub.add_parser("scenarios", help="list the built-in scenarios",
                       description="List the built-in scenarios that `lab simulate` accepts by name.")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(run=run)


def run(args) -> int:
    scenarios = [load_scenario(n) for n in builtin_names()]
    if args.json:
        print(json.dumps({s.name: s.description for s in scenarios}, indent=2))
        return 0
    width = max(len(s.name) for s in scenarios)
    for s in scenarios:
        print(f"{s.name.ljust(width)}  {s.description.split('. ')[0].rstrip('.')}.")
    return 0

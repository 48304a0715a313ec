"""`lab engine --config FILE`: run the trading engine (the same as `python -m engine`)."""
from __future__ import annotations

import json

from lab.errors import LabError


def register(sub):
    p = sub.add_parser("engine", help="run the trading engine from a TOML config",
                       description="Run the engine until its duration or max_orders is reached, or until "
                                   "SIGINT/SIGTERM; print a JSON summary. See docs/engine.md for the config.")
    p.add_argument("--config", required=True, help="engine TOML config")
    p.set_defaults(run=run)


def run(args) -> int:
    from engine.queues import QueueError
    from engine.config import ConfigError, parse_config
    from engine.runner import Engine, start_engine_process
    start_engine_process()
    try:
        with open(args.config, "rb") as f:
            config = parse_config(f.read().decode("utf-8", errors="strict"))
    except (ConfigError, UnicodeDecodeError) as exc:
        raise LabError(f"{args.config}: {exc}") from None
    try:
        with Engine(config) as engine:
            print(json.dumps(engine.run(), indent=2))
    except QueueError as exc:
        raise LabError(str(exc)) from None
    return 0

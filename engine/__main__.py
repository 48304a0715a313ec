"""The engine's command line, `python -m engine --config FILE`: the process set up, the config read,
the Engine run and its summary printed as JSON. `lab engine` sets up its process the same way."""
from __future__ import annotations

import argparse
import json
import sys

from engine.config import ConfigError, parse_config
from engine.queues import QueueError
from engine.runner import Engine, start_engine_process


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Run the wirelab trading engine.")
    parser.add_argument("--config", required=True, help="engine TOML config")
    args = parser.parse_args(argv)
    try:
        start_engine_process()
        with open(args.config, "rb") as f:
            config = parse_config(f.read().decode("utf-8"))
        with Engine(config) as engine:
            print(json.dumps(engine.run(), indent=2))
    except (OSError, ConfigError, UnicodeDecodeError, QueueError) as exc:   # LoggerError is an OSError
        print(f"engine: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("engine: stopped by a signal before it could run", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

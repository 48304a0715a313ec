"""The engine's TOML config: EngineConfig parsed and checked, every error naming its key, and
the config as JSON-able data for the persistence log."""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field

from engine.gateway import STRATEGIES
from engine.models import MODELS
from engine.overseer import RiskLimits
from engine.protocol.registry import DEFAULT_MD, DEFAULT_ORDERS, md_protocols, order_protocol_names


class ConfigError(ValueError):
    """The engine config cannot be used; the message names the key."""


@dataclass
class VenueConfig:
    id: int
    feed: tuple[str, int]
    gateway: tuple[str, int]
    account: int = 1
    orders: str = DEFAULT_ORDERS                         # the order protocol's name
    md: str = DEFAULT_MD                                 # the feed's market-data protocol's name


@dataclass
class EngineConfig:
    name: str = "wirelab-engine"
    strategy: str = "none"
    mode: str = "single"                                 # or "processes" (engine/processes.py)
    wait: str = "yield"                                  # processes mode: "spin" or "yield"
    cpus: list[int] | None = None                        # processes mode: pin round robin
    timing: bool = True                                  # publish every stage to the timing queue
    spin_us: int = 20                                    # single mode: a pass's wait for datagrams, spinning in C
    warm_every: int = 1                                  # single mode: idle passes between hot-path warm-ups (0: off)
    telemetry: str | None = None
    logger: str | None = None                            # persistence log: a logger process records every queue
    duration_s: float | None = None
    max_orders: int | None = None
    venues: list[VenueConfig] = field(default_factory=list)
    ticks: dict = field(default_factory=dict)            # (venue, instrument) -> tick
    models: list[dict] = field(default_factory=list)
    risk: RiskLimits = field(default_factory=RiskLimits)
    queue_capacity: int = 1 << 14

    def instruments(self) -> set[tuple[int, int]]:
        """(venue, instrument) of every instrument the config names, in [[instruments]] or a model."""
        return set(self.ticks) | {(m["venue"], m["instrument"]) for m in self.models}


def _address(value, key) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key}: expected \"host:port\", got {value!r}")
    host, port = value.rsplit(":", 1)
    if not port.isdigit():
        raise ConfigError(f"{key}: port must be a number, got {port!r}")
    return host, int(port)


def parse_config(text: str) -> EngineConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"toml: {exc}") from None
    engine = data.get("engine", {})
    config = EngineConfig(
        name=engine.get("name", "wirelab-engine"), strategy=engine.get("strategy", "none"),
        telemetry=engine.get("telemetry"), duration_s=engine.get("duration_s"),
        max_orders=engine.get("max_orders"), mode=engine.get("mode", "single"),
        wait=engine.get("wait", "yield"), cpus=engine.get("cpus"), timing=engine.get("timing", True),
        logger=engine.get("logger"), spin_us=engine.get("spin_us", 20), warm_every=engine.get("warm_every", 1))
    if config.mode not in ("single", "processes"):
        raise ConfigError(f"engine.mode: {config.mode!r} is not single or processes")
    if config.wait not in ("spin", "yield"):
        raise ConfigError(f"engine.wait: {config.wait!r} is not spin or yield")
    if config.strategy not in STRATEGIES:
        raise ConfigError(f"engine.strategy: {config.strategy!r} is not one of {', '.join(STRATEGIES)}")
    for key, unit in (("spin_us", "microseconds"), ("warm_every", "passes")):
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"engine.{key}: expected a whole number of {unit} >= 0, got {value!r}")
    if config.logger is not None and (not isinstance(config.logger, str) or not config.logger):
        raise ConfigError(f"engine.logger: expected a file path, got {config.logger!r}")
    if config.logger and not config.timing:
        raise ConfigError("engine.logger: needs engine.timing = true (replay orders its inputs by the timing records)")
    readable_md = [p.name for p in md_protocols() if p.book_layout is not None]   # the engine's book reads them
    for i, v in enumerate(data.get("venues", [])):
        if "id" not in v:
            raise ConfigError(f"venues[{i}].id: missing")
        if v.get("orders", DEFAULT_ORDERS) not in order_protocol_names():
            raise ConfigError(f"venues[{i}].orders: {v.get('orders')!r} is not one of "
                              f"{', '.join(order_protocol_names())}")
        if v.get("md", DEFAULT_MD) not in readable_md:
            raise ConfigError(f"venues[{i}].md: {v.get('md')!r} is not one of {', '.join(readable_md)}")
        config.venues.append(VenueConfig(v["id"], _address(v.get("feed"), f"venues[{i}].feed"),
                                         _address(v.get("gateway"), f"venues[{i}].gateway"), v.get("account", 1),
                                         v.get("orders", DEFAULT_ORDERS), v.get("md", DEFAULT_MD)))
    if not config.venues:
        raise ConfigError("venues: at least one [[venues]] is needed")
    for i, inst in enumerate(data.get("instruments", [])):
        config.ticks[(inst["venue"], inst["id"])] = inst.get("tick", 10**6)
    for i, m in enumerate(data.get("models", [])):
        if m.get("type") not in MODELS:
            raise ConfigError(f"models[{i}].type: {m.get('type')!r} is not one of {', '.join(MODELS)}")
        config.models.append(dict(m))
    if not config.models:
        raise ConfigError("models: at least one [[models]] is needed")
    risk = data.get("risk", {})
    config.risk = RiskLimits(**{k: risk[k] for k in ("max_position", "max_open_orders", "max_order_qty")
                                if k in risk})
    return config


def config_record(config: EngineConfig) -> dict:
    """The config as JSON-able data, for the persistence log (replay builds its actors from it)."""
    record = asdict(config)
    record["ticks"] = [[venue, instrument, tick] for (venue, instrument), tick in config.ticks.items()]
    return record

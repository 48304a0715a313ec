"""Scenarios are data: TOML files, validated strictly.

Every error names the file and the key (`krx.toml: md_path[2].rate: ...`).
The schema is documented with an example in docs/scenarios.md.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path as FilePath

from simulator.errors import ScenarioError, SimulatorError
from simulator.framing import FRAMING_KEYS, FRAMINGS, TRANSPORTS, Framing, Transport
from simulator.path import CUT_THROUGH, STORE_AND_FORWARD, Channel, Host, Link, Path, Switch, Tap, compile_path
from simulator.units import UnitError, parse_duration, parse_rate

FIBRE_PS_PER_KM = 5_000_000                       # the seed's 5 us per km
SPEED_OF_LIGHT_M_PER_S = 299_792_458
MEDIA = {"fibre": "fibre", "fiber": "fibre", "air": "air", "vacuum": "air"}

ELEMENT_KEYS = {
    "link": {"type", "name", "rate", "delay", "length_km", "medium", "framing"},
    "channel": {"type", "name", "rate", "delay", "length_km", "medium", "framing", "latency"},
    "switch": {"type", "name", "mode", "latency", "cut_through_bytes"},
    "host": {"type", "name", "serdes_rx", "serdes_tx", "stack_rx", "stack_tx"},
    "tap": {"type", "name"},
}
SECTION_KEYS = {
    "market_data": {"payload_bytes", "transport", "early_read_bytes", "early_read_point"},
    "order": {"payload_bytes", "prefix_bytes", "transport", "ooo_bytes", "reassembly", "prime_lead"},
    "engine": {"processing"},
}


@dataclass(frozen=True)
class MarketData:
    payload_bytes: int
    transport: Transport
    early_read_bytes: int | None = None   # decide once this many payload bytes have arrived
    early_read_point: str | None = None   # where they are read (a tap); default the host NIC

    @property
    def l3_bytes(self) -> int:
        return self.transport.header + self.payload_bytes


@dataclass(frozen=True)
class Order:
    payload_bytes: int
    transport: Transport
    prefix_bytes: int | None = None       # the decision-free prefix that may go early
    ooo_bytes: int | None = None          # decision-free tail for tcp-out-of-order (default prefix_bytes)
    reassembly_ps: int = 0                # receiver's extra time to reassemble IP fragments
    prime_lead_ps: int | None = None      # how long before t_MD early parts leave (default: ample)

    @property
    def l3_bytes(self) -> int:
        return self.transport.header + self.payload_bytes


@dataclass
class Scenario:
    name: str
    description: str
    source: str
    paths: dict[str, Path]                # "md", "order", and any extra "<x>_path" as "x"
    market_data: MarketData
    order: Order | None = None
    processing_ps: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def md_path(self) -> Path:
        return self.paths["md"]

    @property
    def order_path(self) -> Path | None:
        return self.paths.get("order")


# -- finding scenarios --------------------------------------------------------------------

def builtin_names() -> list[str]:
    folder = resources.files("simulator") / "scenarios"
    return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".toml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in name (see builtin_names) or a path to a TOML file."""
    return parse_scenario(*scenario_text(name_or_path))


def scenario_text(name_or_path: str) -> tuple[str, str]:
    """(TOML text, source name) of a built-in scenario or a TOML file."""
    if name_or_path in builtin_names():
        text = (resources.files("simulator") / "scenarios" / f"{name_or_path}.toml").read_text()
        return text, f"{name_or_path}.toml"
    path = FilePath(name_or_path)
    if not path.exists():
        raise SimulatorError(f"no built-in scenario or file named {name_or_path!r} "
                             f"(built-ins: {', '.join(builtin_names())})")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError:
        raise ScenarioError(str(path), "file", "is not UTF-8 text") from None


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, "toml", f"syntax error: {exc}") from None
    return _Reader(source).scenario(data)


# -- validation ---------------------------------------------------------------------------

class _Reader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, problem: str):
        raise ScenarioError(self.source, key, problem)

    def scenario(self, data: dict) -> Scenario:
        path_keys = [k for k in data if k.endswith("_path")]
        allowed = {"name", "description", *SECTION_KEYS, *path_keys}
        for key in data:
            if key not in allowed:
                self.fail(key, f"unknown key (allowed: name, description, md_path, order_path, "
                               f"<name>_path, {', '.join(SECTION_KEYS)})")
        if "md_path" not in data:
            self.fail("md_path", "missing: a scenario needs at least the market-data path")
        if "market_data" not in data:
            self.fail("market_data", "missing: give [market_data] payload_bytes")
        paths = {}
        for key in path_keys:
            elements = data[key]
            if not isinstance(elements, list) or not all(isinstance(e, dict) for e in elements):
                self.fail(key, "must be an array of tables: [[%s]]" % key)
            short = key[: -len("_path")]
            try:
                paths[short] = compile_path(short, [self.element(f"{key}[{i}]", e) for i, e in enumerate(elements)])
            except ScenarioError:
                raise
            except SimulatorError as exc:
                self.fail(key, str(exc))
        self.unique_point_names(paths)
        market = self.market_data(self.section(data, "market_data"))
        if market.early_read_point is not None and market.early_read_point not in {p.name for p in paths["md"].points}:
            self.fail("market_data.early_read_point", f"no point named {market.early_read_point!r} on md_path")
        order = None
        if "order" in data:
            if "order" not in paths:
                self.fail("order", "an [order] needs an order_path")
            order = self.order(self.section(data, "order"))
        elif "order" in paths:
            self.fail("order", "missing: order_path needs [order] payload_bytes")
        engine = self.section(data, "engine") if "engine" in data else {}
        processing = self.duration("engine.processing", engine.get("processing", "0ns"))
        name = data.get("name", FilePath(self.source).stem)
        if not isinstance(name, str) or not name:
            self.fail("name", "must be a non-empty string")
        description = data.get("description", "")
        if not isinstance(description, str):
            self.fail("description", "must be a string")
        notes = [n for p in paths.values() for n in p.notes]
        return Scenario(name, description, self.source, paths, market, order, processing, notes)

    def unique_point_names(self, paths: dict[str, Path]):
        for short, path in paths.items():
            seen = set()
            for p in path.points:
                if p.name in seen:
                    self.fail(f"{short}_path", f"two points are named {p.name!r}; name each tap and host uniquely")
                seen.add(p.name)

    def section(self, data: dict, key: str) -> dict:
        value = data[key]
        if not isinstance(value, dict):
            self.fail(key, "must be a table: [%s]" % key)
        for k in value:
            if k not in SECTION_KEYS[key]:
                self.fail(f"{key}.{k}", f"unknown key (allowed: {', '.join(sorted(SECTION_KEYS[key]))})")
        return value

    def element(self, where: str, e: dict):
        kind = e.get("type")
        if kind is None:
            self.fail(f"{where}.type", "missing (one of: %s)" % ", ".join(ELEMENT_KEYS))
        if kind not in ELEMENT_KEYS:
            self.fail(f"{where}.type", f"unknown type {kind!r} (one of: {', '.join(ELEMENT_KEYS)})")
        for k in e:
            if k not in ELEMENT_KEYS[kind]:
                self.fail(f"{where}.{k}", f"unknown key for a {kind} (allowed: {', '.join(sorted(ELEMENT_KEYS[kind]))})")
        name = e.get("name", f"{kind}{where[where.index('['):]}")
        if not isinstance(name, str) or not name:
            self.fail(f"{where}.name", "must be a non-empty string")
        if kind == "tap":
            if "name" not in e:
                self.fail(f"{where}.name", "missing: every tap needs a name")
            return Tap(name)
        if kind == "host":
            return Host(name, *(self.duration(f"{where}.{k}", e.get(k, "0ns"))
                                for k in ("serdes_rx", "serdes_tx", "stack_rx", "stack_tx")))
        if kind == "switch":
            mode = e.get("mode", STORE_AND_FORWARD)
            if mode not in (STORE_AND_FORWARD, CUT_THROUGH):
                self.fail(f"{where}.mode", f"unknown mode {mode!r} (store-and-forward or cut-through)")
            ct = self.count(f"{where}.cut_through_bytes", e.get("cut_through_bytes", 64), minimum=1)
            return Switch(name, mode, self.duration(f"{where}.latency", e.get("latency", "0ns")), ct)
        if "rate" not in e:
            self.fail(f"{where}.rate", f"missing: a {kind} needs a rate such as \"100Mbps\"")
        rate = self.rate(f"{where}.rate", e["rate"])
        delay = self.propagation(where, e)
        framing = self.framing(f"{where}.framing", e.get("framing", "hdlc" if kind == "channel" else "ethernet"))
        if kind == "channel":
            return Channel(name, rate, delay, framing, self.duration(f"{where}.latency", e.get("latency", "0ns")))
        return Link(name, rate, delay, framing)

    def propagation(self, where: str, e: dict) -> int:
        if "delay" in e and "length_km" in e:
            self.fail(f"{where}.delay", "give delay or length_km, not both")
        if "medium" in e and "length_km" not in e:
            self.fail(f"{where}.medium", "medium needs length_km")
        if "length_km" not in e:
            return self.duration(f"{where}.delay", e.get("delay", "0ns"))
        km = e["length_km"]
        if isinstance(km, bool) or not isinstance(km, (int, float)) or km < 0:
            self.fail(f"{where}.length_km", f"must be a number >= 0, got {km!r}")
        medium = e.get("medium", "fibre")
        if isinstance(medium, str) and medium in MEDIA:
            ps_per_km = (Decimal(FIBRE_PS_PER_KM) if MEDIA[medium] == "fibre"
                         else Decimal(10**15) / SPEED_OF_LIGHT_M_PER_S)
        elif isinstance(medium, (int, float)) and not isinstance(medium, bool) and medium >= 1:
            ps_per_km = Decimal(str(medium)) * 10**15 / SPEED_OF_LIGHT_M_PER_S
        else:
            self.fail(f"{where}.medium", f"{medium!r}: use fibre, air, or a refractive index >= 1")
        return int((Decimal(str(km)) * ps_per_km).to_integral_value())

    def framing(self, key: str, value) -> Framing:
        if isinstance(value, str):
            if value not in FRAMINGS:
                self.fail(key, f"unknown framing {value!r} (one of: {', '.join(FRAMINGS)}, or a table "
                               f"with {', '.join(FRAMING_KEYS)})")
            return FRAMINGS[value]
        if isinstance(value, dict):
            for k in value:
                if k not in FRAMING_KEYS:
                    self.fail(f"{key}.{k}", f"unknown key (allowed: {', '.join(FRAMING_KEYS)})")
            return Framing("custom", *(self.count(f"{key}.{k}", value.get(k, 0)) for k in FRAMING_KEYS))
        self.fail(key, "must be a framing name or a table")

    def market_data(self, s: dict) -> MarketData:
        payload = self.count("market_data.payload_bytes", s.get("payload_bytes"), minimum=1)
        early = s.get("early_read_bytes")
        if early is not None:
            early = self.count("market_data.early_read_bytes", early, minimum=1)
            if early > payload:
                self.fail("market_data.early_read_bytes", f"{early} is more than payload_bytes {payload}")
        point = s.get("early_read_point")
        if point is not None and not isinstance(point, str):
            self.fail("market_data.early_read_point", "must be the name of a tap")
        return MarketData(payload, self.transport("market_data.transport", s.get("transport", "udp")), early, point)

    def order(self, s: dict) -> Order:
        payload = self.count("order.payload_bytes", s.get("payload_bytes"), minimum=1)
        optional = {}
        for key in ("prefix_bytes", "ooo_bytes"):
            if key in s:
                optional[key] = self.count(f"order.{key}", s[key], minimum=1)
                if optional[key] >= payload:
                    self.fail(f"order.{key}", f"{optional[key]} must be less than payload_bytes {payload}")
        prime = self.duration("order.prime_lead", s["prime_lead"]) if "prime_lead" in s else None
        return Order(payload, self.transport("order.transport", s.get("transport", "tcp")),
                     reassembly_ps=self.duration("order.reassembly", s.get("reassembly", "0ns")),
                     prime_lead_ps=prime, **optional)

    def transport(self, key: str, value) -> Transport:
        if value not in TRANSPORTS:
            self.fail(key, f"unknown transport {value!r} (one of: {', '.join(TRANSPORTS)})")
        return TRANSPORTS[value]

    def count(self, key: str, value, minimum: int = 0) -> int:
        if value is None:
            self.fail(key, "missing")
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, f"must be a whole number >= {minimum}, got {value!r}")
        return value

    def rate(self, key: str, value) -> int:
        try:
            return parse_rate(value)
        except UnitError as exc:
            self.fail(key, str(exc))

    def duration(self, key: str, value) -> int:
        try:
            return parse_duration(value)
        except UnitError as exc:
            self.fail(key, str(exc))

"""Process-per-actor mode: the same actors and queues, one process each.

md_handler -> (md queue) -> trade_models -> (ideal vector) -> overseer
-> (orders queue) -> gateway -> (accounts queue) -> overseer

Each process loops over its actor; when there is nothing to do it either spins
(`wait = "spin"`: lowest latency, burns a core) or yields the CPU
(`wait = "yield"`: sched_yield). `cpus` pins the processes round robin.

On this 2-core machine four spinning processes fight each other and the venue
for two cores, so single-process mode is the default; see engine/runner.py.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import time

from engine.lifeline import die_with_parent

ROLES = ("md_handler", "trade_models", "overseer", "gateway")
CHECK_STOP_EVERY = 256          # loop passes between looks at the shared stop flag


def run_processes(engine, wait: str = "yield", cpus: list[int] | None = None) -> dict:
    """Fork one process per actor, run until the config's limits or `engine.stopping` (SIGINT/SIGTERM:
    Engine.run), then merge summaries."""
    if wait not in ("spin", "yield"):
        raise ValueError(f"wait must be spin or yield, got {wait!r}")
    ctx = mp.get_context("fork")
    stop = ctx.Value(ctypes.c_bool, False, lock=False)
    results = ctx.Queue()
    orders_queue = engine.queues[1]
    procs = [ctx.Process(target=_actor, name=f"engine-{role}", daemon=True,
                         args=(engine, role, stop, results, wait, None if not cpus else cpus[i % len(cpus)],
                               os.getpid()))
             for i, role in enumerate(ROLES)]
    for p in procs:
        p.start()
    config, start = engine.config, time.monotonic()
    try:
        while not engine.stopping and all(p.is_alive() for p in procs):
            time.sleep(0.005)
            if config.duration_s is not None and time.monotonic() - start >= config.duration_s:
                break
            if config.max_orders is not None and orders_queue.head() >= config.max_orders:
                break
    finally:
        stop.value = True
        parts = {}
        for _ in procs:
            try:
                role, part = results.get(timeout=10)
                parts[role] = part
            except Exception:  # noqa: BLE001 - a dead child simply reports nothing
                break
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return _merge(parts, [p.exitcode for p in procs])


def _actor(engine, role: str, stop, results, wait: str, cpu: int | None, engine_pid: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):       # the parent decides when to stop
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent(engine_pid, signal.SIGKILL)       # it holds nothing of its own to clean up
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    timing_queue = engine.queues[3]
    # three processes publish timing, so it needs the shared (MPMC) producer
    shared_timing = timing_queue.producer(shared=True) if engine.config.timing else None
    step = _steps(engine, role, shared_timing)
    idle = os.sched_yield if wait == "yield" else (lambda: None)
    passes = 0
    try:
        while True:
            passes += 1
            if passes % CHECK_STOP_EVERY == 0 and stop.value:
                break
            if not step():
                idle()
    finally:
        results.put((role, _part(engine, role)))


def _steps(engine, role: str, timing):
    """The actor's share of Engine.step, publishing timing through this process's producer."""
    engine.timing = engine.md.timing = engine.overseer.timing = timing
    if role == "md_handler":
        return engine.md.poll
    if role == "trade_models":
        return engine.run_models
    if role == "overseer":
        return engine.run_overseer
    gateway = engine.gateway
    gateway.connect_all()

    def gateway_step() -> int:
        sent = gateway.poll()
        gateway.poll_sockets()
        return sent
    return gateway_step


def _part(engine, role: str) -> dict:
    if role == "md_handler":
        return {"md_handled": engine.md.handled, "md_dropped": engine.md.drop_counts(), **engine.md.sequence_counts()}
    if role == "overseer":
        o = engine.overseer
        return {"refused": dict(o.refused),
                "positions": {v: dict(a.positions) for v, a in o.accounts.items()}}
    if role == "gateway":
        engine.finish()                                   # TX stamps, close, telemetry file
        return {"orders": engine.gateway.counts["orders"], "gateway": dict(engine.gateway.counts),
                "venue_failed": engine.gateway.failed}
    return {}


def _merge(parts: dict, exitcodes: list) -> dict:
    summary = {"mode": "processes", "exitcodes": exitcodes}
    for part in parts.values():
        summary.update(part)
    return summary

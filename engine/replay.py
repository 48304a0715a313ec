"""Replay a persistence log: re-drive the trade models and the Overseer from the logged
MarketUpdates and AccountUpdates, and compare the OrderRequests they produce with the logged
ones, byte for byte except the two stamps a replay takes afresh (publish_tsc, decision_tsc).
origin_tsc and kernel_rx_ns are copied from the logged inputs, so they must match.

Ordering. Models are pure functions of the updates they see, in queue order. The Overseer is
not a function of its inputs alone but of how they interleave with its polls: a poll sees
only the latest ideal order per slot, and what it does depends on which acks, fills and
cancels it has already taken in. The replay rebuilds that interleaving from stamps on one
clock (TSC; one process in single-process mode):

- a model's ideal order became visible when the model published it (trade_model records on
  the timing queue, stamped with the decision), so a MarketUpdate is fed to the models at
  its last such stamp, or at its own publish stamp when it changed no ideal order;
- the Overseer polled where it published an OrderRequest (overseer/order_request records);
- it took in each account update where the engine's logger option records it
  (overseer/account_update records: the engine publishes one per account update the
  Overseer applies); a poll that published nothing also happened before every such batch,
  because the loop polls before it takes in the batch.

Polls that publish nothing change nothing but which version of a slot the Overseer last
looked at, and the next poll before anything else changes looks at the same or a newer
version, so the replay need not know where those polls were. In single-process mode this
rebuilds the engine's order of events exactly. In processes mode the actors run
concurrently: the stamps still order every event, but a poll may have read the vector a
moment before its publish stamp, so replay there is best effort. A log taken by a
standalone logger of an engine run without its logger option has no apply records: account
updates are then taken in at their publish stamps, which is approximate, and the result
says so (`ordering`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from engine.logger import Log, LogError, read_log
from engine.messages import ACTORS, KINDS, ORDER_REQUEST
from engine.models import MODELS
from engine.overseer import Overseer, RiskLimits

FRESH_STAMPS = ("publish_tsc", "decision_tsc")     # taken anew on replay: not compared
FEED, POLL, APPLY = 0, 1, 2                         # on equal stamps: feed, then poll, then apply


class MemoryVector:
    """The ideal-orders SeqlockVector's semantics (version = 2 x writes) in process memory."""

    def __init__(self, capacity: int):
        self.versions = [0] * capacity
        self.values: list[bytes | None] = [None] * capacity

    def write(self, key: int, payload: bytes) -> None:
        self.values[key] = bytes(payload)
        self.versions[key] += 2

    def version(self, key: int) -> int:
        return self.versions[key]

    def read_bytes(self, key: int) -> tuple[int, bytes] | None:
        version = self.versions[key]
        return None if version == 0 else (version // 2, self.values[key])


class Collector:
    """Stands in for the orders queue's producer."""

    def __init__(self):
        self.messages: list[bytes] = []

    def publish(self, payload: bytes) -> int:
        self.messages.append(payload)
        return len(self.messages) - 1


@dataclass
class ReplayResult:
    log: str
    engine: str
    mode: str
    ordering: str                   # "apply records" (exact in single mode) or "publish stamps"
    complete: bool                  # the log covers every queue from its first message, no gaps
    missed: dict                    # role -> messages the logger lost
    market_updates: int
    account_updates: int
    applied: int                    # account updates the Overseer took in before the engine stopped
    polls: int
    logged: int                     # OrderRequests in the log
    replayed: int                   # OrderRequests the replay produced
    matched: int
    mismatched: int
    first_mismatch: dict | None
    refused: dict

    @property
    def identical(self) -> bool:
        return self.mismatched == 0

    def to_dict(self) -> dict:
        return {**asdict(self), "identical": self.identical}


def replay_file(path: str) -> ReplayResult:
    return replay(read_log(path))


def replay(log: Log) -> ReplayResult:
    config = log.config
    if not config or not config.get("models"):
        raise LogError(f"{log.path}: the log holds no engine config to build the models from "
                       "(use the engine's logger option, or python -m engine.logger --config)")
    missing = {"md", "orders", "accounts", "timing"} - set(log.queues)
    if missing:
        raise LogError(f"{log.path}: the log has no {', '.join(sorted(missing))} queue")
    models, overseer, vector, requests = _actors(log.path, config)
    md, accounts = log.queues["md"], log.queues["accounts"]
    events, ordering, applied = _schedule(log)
    md_bytes, md_size = md.messages.tobytes(), md.layout.size
    account_bytes, account_size = accounts.messages.tobytes(), accounts.layout.size
    previous = None
    for _stamp, what, i in events:
        if what == FEED:
            raw = md_bytes[i * md_size:(i + 1) * md_size]
            for model in models:
                model.on_update(raw, vector)
        elif what == POLL:
            overseer.poll()
        else:
            if previous != APPLY:
                overseer.poll()                 # the loop polls before it takes in a batch
            overseer.on_account(account_bytes[i * account_size:(i + 1) * account_size])
        previous = what
    logged = log.queues["orders"].messages
    replayed = np.frombuffer(b"".join(requests.messages), ORDER_REQUEST.dtype)
    matched, mismatched, first = compare(logged, replayed)
    complete = bool(log.end.get("complete")) and all(q.start_seq == 0 and not q.gaps for q in log.queues.values())
    return ReplayResult(
        log=log.path, engine=str(log.header.get("engine")), mode=str(config.get("mode", "single")),
        ordering=ordering, complete=complete, missed={role: q.missed for role, q in log.queues.items()},
        market_updates=len(md.messages), account_updates=len(accounts.messages), applied=applied,
        polls=int(sum(1 for _s, what, _i in events if what == POLL)), logged=len(logged),
        replayed=len(replayed), matched=matched, mismatched=mismatched, first_mismatch=first,
        refused=dict(overseer.refused))


def _actors(path: str, config: dict):
    """The trade models and the Overseer as the engine runner builds them."""
    try:
        models = []
        for slot, m in enumerate(config["models"]):
            params = {k: v for k, v in m.items() if k not in ("type", "venue", "instrument")}
            models.append(MODELS[m["type"]](slot + 1, m["venue"], m["instrument"], slot, **params))
        vector, requests = MemoryVector(max(8, len(models))), Collector()
        overseer = Overseer(vector, range(len(models)), requests, None, RiskLimits(**config.get("risk", {})))
    except (KeyError, TypeError) as exc:
        raise LogError(f"{path}: the logged engine config cannot build the models and Overseer ({exc})") from None
    return models, overseer, vector, requests


def _schedule(log: Log) -> tuple[list[tuple[int, int, int]], str, int]:
    """(stamp, FEED/POLL/APPLY, index) in the order the engine did them; the ordering used; applies."""
    md, accounts, timing = log.queues["md"].messages, log.queues["accounts"], log.queues["timing"].messages
    publisher, kind = timing["publisher"], timing["kind"]
    by = {name: timing[(publisher == ACTORS[actor]) & (kind == KINDS[message])]
          for name, actor, message in (("writes", "trade_model", "ideal_order"),
                                       ("polls", "overseer", "order_request"),
                                       ("applies", "overseer", "account_update"))}
    # A MarketUpdate reaches the Overseer with the last ideal order it caused (same origin).
    feed = md["publish_tsc"].astype(np.uint64)
    if len(md) and len(by["writes"]):
        order = np.argsort(md["origin_tsc"], kind="stable")
        origins = md["origin_tsc"][order]
        at = np.searchsorted(origins, by["writes"]["origin_tsc"]).clip(max=len(md) - 1)
        caused = origins[at] == by["writes"]["origin_tsc"]
        np.maximum.at(feed, order[at[caused]], by["writes"]["publish_tsc"][caused])
    feed = np.maximum.accumulate(feed) if len(feed) else feed      # models take updates in queue order
    if len(by["applies"]) or log.config.get("logger"):          # the engine ran with its logger option
        ordering = "apply records"
        records = by["applies"][np.argsort(by["applies"]["seq"], kind="stable")]
        at = np.searchsorted(records["seq"], accounts.seqs)
        has = at < len(records)
        has[has] = records["seq"][at[has]] == accounts.seqs[has]
        apply_index = np.flatnonzero(has)       # the others came after the Overseer's last batch
        apply_stamp = records["publish_tsc"][at[has]]
    else:
        ordering = "publish stamps"
        apply_index = np.arange(len(accounts.messages))
        apply_stamp = accounts.messages["publish_tsc"]
    stamps = np.concatenate([feed, by["polls"]["publish_tsc"], apply_stamp]).astype(np.uint64)
    what = np.concatenate([np.full(len(feed), FEED), np.full(len(by["polls"]), POLL),
                           np.full(len(apply_index), APPLY)])
    index = np.concatenate([np.arange(len(feed)), np.arange(len(by["polls"])), apply_index])
    order = np.lexsort((index, what, stamps))
    events = list(zip(stamps[order].tolist(), what[order].tolist(), index[order].tolist()))
    return events, ordering, len(apply_index)


def compare(logged: np.ndarray, replayed: np.ndarray) -> tuple[int, int, dict | None]:
    """(matched, mismatched, first mismatch) of two OrderRequest streams, position by position,
    on every byte except the fresh stamps."""
    size = ORDER_REQUEST.size
    keep = np.ones(size, bool)
    for name in FRESH_STAMPS:
        offset = ORDER_REQUEST.offset(name)
        keep[offset:offset + ORDER_REQUEST.dtype.fields[name][0].itemsize] = False
    a = np.ascontiguousarray(logged).view(np.uint8).reshape(-1, size)[:, keep]
    b = np.ascontiguousarray(replayed).view(np.uint8).reshape(-1, size)[:, keep]
    n = min(len(a), len(b))
    same = (a[:n] == b[:n]).all(axis=1)
    matched = int(same.sum())
    mismatched = n - matched + abs(len(a) - len(b))
    if not mismatched:
        return matched, 0, None
    index = int(np.argmin(same)) if not same.all() else n
    logged_row = _fields(logged[index]) if index < len(logged) else None
    replayed_row = _fields(replayed[index]) if index < len(replayed) else None
    differ = [name for name in ORDER_REQUEST.dtype.names if name not in FRESH_STAMPS
              and (logged_row is None or replayed_row is None or logged_row[name] != replayed_row[name])]
    differ = differ or ["(padding bytes)"]
    return matched, mismatched, {"index": index, "fields": differ, "logged": logged_row, "replayed": replayed_row}


def _fields(record) -> dict:
    return {name: int(record[name]) for name in ORDER_REQUEST.dtype.names}

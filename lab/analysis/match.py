"""Pair each order with the market-data message that triggered it.

Three ways (`--match`), or `auto` (the command's default): trigger where the orders'
protocol carries the MD seq or a telemetry file links each order to it, nearest otherwise.
- trigger: the order carries the MD seq that triggered it (the binary NewOrder's
  trigger_seq, FIX tag 9001), or telemetry gives it (OUCH's order token).
- fix-tag:N: FIX tag N of the order holds the MD seq.
- nearest: no seq at all (captures of foreign systems): an order belongs to the
  last MD message whose first bit came strictly before the order's first bit,
  so each MD is paired with the first order after it, if that order comes
  before the next MD.

What does not pair is counted and listed, as exact-capture's matcher does:
orders whose trigger is not in the capture (unmatched orders), MD messages no
order points at (unmatched MD; most MD triggers nothing), and duplicates:
orders after the first for the same MD, and MD messages that repeat a seq
already seen (the first captured is the trigger).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from engine.protocol.fix import TRIGGER_SEQ_TAG
from lab.errors import LabError

TRIGGER = "trigger"
NEAREST = "nearest"
FIX_TAG = "fix-tag"
AUTO = "auto"              # trigger where the orders' protocol carries one (or telemetry links it), else nearest


class MatchError(LabError):
    """A --match mode that cannot be understood."""


@dataclass(frozen=True)
class MatchMode:
    kind: str                    # TRIGGER, NEAREST or FIX_TAG
    fix_tag: int = TRIGGER_SEQ_TAG

    def __str__(self) -> str:
        return f"{FIX_TAG}:{self.fix_tag}" if self.kind == FIX_TAG else self.kind


def parse_match(text: str) -> MatchMode:
    """'auto', 'trigger', 'nearest' or 'fix-tag:N' (N a positive FIX tag number)."""
    if text in (AUTO, TRIGGER, NEAREST):
        return MatchMode(text)
    found = re.fullmatch(r"fix-tag:([0-9]{1,9})", text)
    if found and int(found.group(1)) > 0:
        return MatchMode(FIX_TAG, int(found.group(1)))
    raise MatchError(f"--match {text!r}: use auto, trigger, nearest or fix-tag:N (N a FIX tag number)")


@dataclass
class Matches:
    """Row indices into the MD and order tables."""
    md: np.ndarray                  # per matched trigger, in t_MD order
    order: np.ndarray               # the order it triggered
    unmatched_md: np.ndarray        # MD rows (first arrival of each seq) no order points at
    unmatched_orders: np.ndarray    # order rows whose trigger is not in the capture
    duplicate_orders: np.ndarray    # order rows after the first for the same MD
    duplicate_md: np.ndarray        # MD rows repeating a seq seen earlier

    @property
    def duplicates(self) -> int:
        return int(self.duplicate_orders.size + self.duplicate_md.size)


def _stable_order(keys: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(argsort(kind="stable"), the keys in that order); the order is None, with no sort or
    copy, when the keys are already in order (a feed's seqs, a capture's stamps)."""
    if keys.size < 2 or bool((keys[1:] >= keys[:-1]).all()):
        return None, keys
    order = np.argsort(keys, kind="stable")
    return order, keys[order]


def _index(order: np.ndarray | None, positions: np.ndarray) -> np.ndarray:
    """Rows at these positions of a _stable_order order."""
    return positions if order is None else order[positions]


def _take(values: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """values put in a _stable_order order."""
    return values if order is None else values[order]


def _rows(order: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """Rows where mask (over the positions of a _stable_order order) is set."""
    return np.flatnonzero(mask) if order is None else order[mask]


def _firsts(sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean: the first row of each run of equal keys in a sorted array."""
    first = np.ones(sorted_keys.size, bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return first


def _ascending(rows: np.ndarray) -> np.ndarray:
    """rows sorted, without a sort when they already are (the usual case)."""
    return _stable_order(rows)[1]


def _find(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of each query in sorted, distinct keys, or -1.

    A feed's seqs are usually consecutive: then the index is the query minus the
    first key, with no search.
    """
    if sorted_keys.size == 0:
        return np.full(queries.size, -1, np.int64)
    low = int(sorted_keys[0])
    if int(sorted_keys[-1]) - low + 1 == sorted_keys.size:
        slot = queries - low
        return np.where((queries >= low) & (slot < sorted_keys.size), slot, -1)
    slot = np.minimum(np.searchsorted(sorted_keys, queries), sorted_keys.size - 1)
    return np.where(sorted_keys[slot] == queries, slot, -1)


def by_trigger(md_seq: np.ndarray, md_time: np.ndarray, order_trigger: np.ndarray,
               order_time: np.ndarray) -> Matches:
    """Match on the seq each order carries; the earliest order per MD is the match.

    Rows are in capture order; a seq seen twice keeps its first capture. An MD
    row or order with a negative seq (unknown) matches nothing.
    """
    md_order, sorted_seq = _stable_order(md_seq)                   # by seq, then capture order
    md_first = _firsts(sorted_seq) & (sorted_seq >= 0)             # an unknown seq is no duplicate
    if md_first.all():                                             # the usual case: every seq once
        canonical, canonical_seq, duplicate_md = md_order, sorted_seq, np.zeros(0, np.int64)
    else:
        duplicate_md = _ascending(_rows(md_order, ~md_first & (sorted_seq >= 0)))
        canonical = _rows(md_order, md_first)                     # first arrival per known seq
        canonical_seq = sorted_seq[md_first]

    by_time, _ = _stable_order(order_time)
    trigger = _take(order_trigger, by_time)
    slot = _find(canonical_seq, trigger)
    found = slot >= 0
    unmatched_orders = _ascending(_rows(by_time, ~found))
    found_rows = _rows(by_time, found)
    found_slot = slot[found]
    # the first order (in time) for each MD wins; a stable sort by slot keeps time order inside
    regroup, regrouped_slot = _stable_order(found_slot)
    regrouped_rows = _take(found_rows, regroup)
    first = _firsts(regrouped_slot)
    winners, winner_slot = regrouped_rows[first], regrouped_slot[first]
    duplicate_orders = _ascending(regrouped_rows[~first])
    taken = np.zeros(canonical_seq.size, bool)
    taken[winner_slot] = True
    unknown = _rows(md_order, sorted_seq < 0)                      # unknown seqs: never matched
    md_rows = _index(canonical, winner_slot)
    in_time, _ = _stable_order(md_time[md_rows])
    unmatched_md = _rows(canonical, ~taken)
    return Matches(md=_take(md_rows, in_time), order=_take(winners, in_time),
                   unmatched_md=_ascending(np.concatenate([unmatched_md, unknown]) if unknown.size
                                           else unmatched_md),
                   unmatched_orders=unmatched_orders, duplicate_orders=duplicate_orders, duplicate_md=duplicate_md)


def nearest(md_time: np.ndarray, order_time: np.ndarray) -> Matches:
    """Each order to the last MD strictly before it; per MD the first such order wins."""
    md_by_time, times = _stable_order(md_time)
    by_time, order_times = _stable_order(order_time)
    slot = np.searchsorted(times, order_times, side="left") - 1    # strictly before
    found = slot >= 0
    unmatched_orders = np.sort(_rows(by_time, ~found), kind="stable")
    found_rows, found_slot = _rows(by_time, found), slot[found]
    first = _firsts(found_slot)                     # orders are in time order, so slots are sorted
    taken = np.zeros(md_time.size, bool)
    taken[found_slot[first]] = True
    return Matches(md=_index(md_by_time, found_slot[first]), order=found_rows[first],
                   unmatched_md=np.sort(_rows(md_by_time, ~taken), kind="stable"), unmatched_orders=unmatched_orders,
                   duplicate_orders=np.sort(found_rows[~first], kind="stable"), duplicate_md=np.zeros(0, np.int64))


MD_COLUMNS = {"seq": np.int64, "t_md_ns": np.int64, "packet": np.int64}


@dataclass
class PartMatches:
    """What one part of a capture settled: matched pairs and the misses (as rows of its inputs)."""
    md: dict[str, np.ndarray]             # MD_COLUMNS of each matched trigger, in t_MD order
    order: np.ndarray                     # rows of the part's orders, beside them
    window: dict[str, np.ndarray]         # MD_COLUMNS of the MD this part matched against
    unmatched_md: np.ndarray              # rows of window no order pointed at, evicted from it
    duplicate_md: np.ndarray              # rows of window
    unmatched_orders: np.ndarray          # rows of the part's orders
    duplicate_orders: np.ndarray


class MdWindow:
    """MD messages that orders in later parts of a capture may still point at.

    Each part's orders are matched (by_trigger or nearest) against the window plus
    the part's MD. A message stays in the window until it is more than `window_ns`
    older than the newest stamp seen; it is counted unmatched when it leaves
    untaken. An order for a message already taken in an earlier part is a duplicate.
    Read in one part, this is exactly by_trigger or nearest over the whole capture.
    """

    def __init__(self, mode: MatchMode, window_ns: int):
        self.mode, self.window_ns = mode, window_ns
        self.kept = {name: np.zeros(0, dtype) for name, dtype in MD_COLUMNS.items()}
        self.taken = np.zeros(0, bool)

    def __len__(self) -> int:
        return self.taken.size

    def match(self, md: dict[str, np.ndarray], order_trigger: np.ndarray, order_first_bit: np.ndarray,
              order_time: np.ndarray, newest_ns: int | None) -> PartMatches:
        """This part's MD (MD_COLUMNS, capture order) and orders; newest_ns None at the end."""
        window = {name: np.concatenate([self.kept[name], md[name]]) for name in MD_COLUMNS}
        taken = np.concatenate([self.taken, np.zeros(md["seq"].size, bool)])
        if self.mode.kind == NEAREST:
            found = nearest(window["t_md_ns"], order_time)
        else:
            found = by_trigger(window["seq"], window["t_md_ns"], order_trigger, order_first_bit)
        again = taken[found.md]                      # taken by an order of an earlier part
        duplicate_orders = np.sort(np.concatenate([found.duplicate_orders, found.order[again]]), kind="stable")
        md_rows, orders = found.md[~again], found.order[~again]
        taken[md_rows] = True
        canonical = np.ones(taken.size, bool)
        canonical[found.duplicate_md] = False        # only the first capture of a seq is kept
        if newest_ns is None:
            leaves = canonical
        else:
            leaves = canonical & (window["t_md_ns"] < newest_ns - self.window_ns)
            if self.mode.kind != NEAREST:
                leaves |= canonical & (window["seq"] < 0)    # an unknown seq never matches
        stays = canonical & ~leaves
        unmatched = np.flatnonzero(leaves & ~taken)
        self.kept = {name: values[stays] for name, values in window.items()}
        self.taken = taken[stays]
        return PartMatches(md={name: values[md_rows] for name, values in window.items()}, order=orders,
                           window=window, unmatched_md=unmatched, duplicate_md=found.duplicate_md,
                           unmatched_orders=found.unmatched_orders, duplicate_orders=duplicate_orders)

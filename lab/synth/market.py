"""The synth's market: a feed of book updates at random gaps (bursts and lulls), in datagrams of
the MD protocol's shape, which of them trigger an order, and what each order says."""
from __future__ import annotations

import numpy as np

from engine.messages import BUY, SELL
from engine.protocol.registry import md_protocol
from lab.capture.frames import UDP_FRAME_HEADER
from simulator.framing import ethernet_slot_ns

TRIGGER_PROBABILITY = (0.2, 0.4)                 # drawn once per seed
MD_MEAN_GAP_NS = (3_000, 15_000)                 # drawn once per seed: the feed's mean gap
MD_BURST_FRACTION, MD_BURST_GAP_NS = 0.3, 400
INSTRUMENTS = np.array([42, 43, 1001, 2002], np.uint32)
TICK = 1_000_000                                 # 0.01 in price ticks of 1e-8


def market_data(rng, config, t0: int):
    """MD datagrams: their content columns, first bits and slots, and which trigger."""
    rate = config.line_rate_bps
    per_trigger = rng.geometric(rng.uniform(*TRIGGER_PROBABILITY), config.triggers)
    trigger_md = np.cumsum(per_trigger) - 1
    count = int(trigger_md[-1]) + 1
    n_updates = 2 + rng.choice(4, count, p=[0.4, 0.3, 0.2, 0.1])
    n_trades = (rng.random(count) < 0.15).astype(np.int64)
    length, messages = md_protocol(config.md_format).synth_shape(n_updates, n_trades)
    slot = ethernet_slot_ns(UDP_FRAME_HEADER.itemsize + length, rate)
    # The feed keeps the wire at most half busy, whatever the line rate.
    mean_gap = max(rng.uniform(*MD_MEAN_GAP_NS), 2 * float(slot.max()))
    burst = rng.random(count) < MD_BURST_FRACTION
    idle = np.round(np.where(burst, rng.exponential(MD_BURST_GAP_NS, count),
                             rng.exponential(mean_gap, count))).astype(np.int64)
    gaps = np.concatenate([[0], slot[:-1]]) + idle
    gaps[0] = 0
    first = t0 + np.cumsum(gaps)
    mid = (100 * 10**8 + TICK * np.cumsum(rng.integers(-1, 2, count))).astype(np.int64)
    instrument = rng.choice(INSTRUMENTS, count)
    bid = mid + (instrument.astype(np.int64) % 7) * 100 * TICK
    columns = {
        "length": length, "n_updates": n_updates, "n_trades": n_trades,
        "seq": (int(rng.integers(1, 10**6)) + np.cumsum(messages) - messages).astype(np.uint64),   # first message's
        "venue": np.full(count, 3, np.uint16), "instrument": instrument,
        "send_ts_ns": first - rng.integers(20_000, 60_000, count),
        "bid": bid, "ask": bid + TICK * (1 + (rng.random(count) < 0.2)),
        "qty": rng.integers(1, 50, (count, 6)) * 100,    # best bid, best ask, 3 deeper levels, trade
        "aggressor": rng.integers(BUY, SELL + 1, count).astype(np.uint8),
    }
    return columns, first, slot, trigger_md


def order_fields(rng, md_cols: dict, trigger_md: np.ndarray) -> dict:
    """What each order says: it takes the triggering datagram's best price."""
    n = trigger_md.size
    side = rng.integers(BUY, SELL + 1, n)
    return {"side": side, "qty": rng.integers(1, 10, n) * 100,
            "price": np.where(side == BUY, md_cols["ask"][trigger_md], md_cols["bid"][trigger_md]),
            "instrument": md_cols["instrument"][trigger_md], "trigger_seq": md_cols["seq"][trigger_md],
            "client_order_id": 500_000 + np.arange(n), "venue_order_id": 7_000_000 + np.arange(n), "account": 7}

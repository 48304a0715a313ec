"""Single-process mode hands messages from actor to actor directly; the queues must still
carry exactly what the queue path (processes mode) puts on them."""
import os
import socket

import numpy as np

from engine.clock import tsc
from engine.config import parse_config
from engine.gateway import ACCOUNT, REQUEST
from engine.messages import IDEAL_ORDER, MARKET_UPDATE, ORDER_REQUEST
from engine.messages import IOC
from engine.runner import Engine
from test_engine_e2e import free_port
from test_persistence import market

STAMPS = {"publish_tsc", "decision_tsc"}          # taken afresh by each path


def config(tag: str, mode: str):
    return parse_config(f"""
[engine]
name = "hot-{tag}-{os.getpid()}"
mode = "{mode}"
[[venues]]
id = 1
feed = "127.0.0.1:0"
gateway = "127.0.0.1:{free_port(socket.SOCK_STREAM)}"
[[instruments]]
venue = 1
id = 7
tick = 1000000
[[models]]
type = "imbalance-taker"
venue = 1
instrument = 7
[[models]]
type = "join-the-touch"
venue = 1
instrument = 7
max_spread = 2000000
[[models]]
type = "join-the-touch"
venue = 1
instrument = 8
""")


def without_stamps(records: np.ndarray) -> list[tuple]:
    return [tuple(int(r[name]) for name in records.dtype.names if name not in STAMPS) for r in records]


def queue_contents(engine: Engine) -> dict:
    md_q, orders_q = engine.queues[0], engine.queues[1]
    out = {}
    for name, queue, layout in (("md", md_q, MARKET_UPDATE), ("orders", orders_q, ORDER_REQUEST)):
        consumer = queue.consumer(from_start=True)
        raw = b"".join(iter(consumer.poll_bytes, None))
        out[name] = without_stamps(np.frombuffer(raw, layout.dtype))
    out["ideal"] = [(got[0], without_stamps(np.frombuffer(got[1], IDEAL_ORDER.dtype)))
                    if (got := engine.ideal.read_bytes(slot)) else None for slot in range(3)]
    return out


class Venue:
    """Answers an engine's OrderRequests on its accounts queue: IOCs fill, DAY orders rest, cancels cancel."""

    def __init__(self, engine: Engine):
        self.engine, self.requests = engine, engine.queues[1].consumer(from_start=True)

    def answer(self) -> None:
        accounts = self.engine.gateway.accounts
        for raw in iter(self.requests.poll_bytes, None):
            r = REQUEST.unpack(raw)
            oid, kind, side, tif, price, qty, target = r[2], r[7], r[8], r[9], r[10], r[11], r[12]
            if kind == ord("C"):
                accounts.publish(ACCOUNT.pack(0, 0, target, target, 1, ord("X"), 0, 0, 0, 0, 0))
                continue
            accounts.publish(ACCOUNT.pack(0, 0, oid, oid, 1, ord("A"), 0, 0, 0, qty, 0))
            if tif == IOC:
                accounts.publish(ACCOUNT.pack(0, 0, oid, oid, 1, ord("F"), side, price, qty, 0, 0))


def test_direct_hand_over_publishes_what_the_queue_path_publishes():
    """Also with the hot path warmed on shadows before every datagram: the warm-ups change nothing real."""
    grams = market(400) + [b"WM" + bytes(30)]                      # one malformed datagram as well
    with Engine(config("single", "single")) as single, Engine(config("queues", "processes")) as queued:
        venues = Venue(single), Venue(queued)
        for seq, gram in enumerate(grams):
            single.warmer.run()
            app_in = tsc()
            single.on_datagram(gram, seq, app_in)
            single.step()                                          # the rest of the loop's pass
            queued.md.handle(gram, seq, app_in)
            queued.run_models()
            queued.run_overseer()
            for venue in venues:
                venue.answer()
            single.step()                                          # takes in the account updates
            queued.run_overseer()
        fast, slow = queue_contents(single), queue_contents(queued)
        assert len(fast["md"]) == 400 and len(fast["orders"]) > 100
        assert {kind for *_, kind, _s, _t, _p, _q, _target, _rx in fast["orders"]} == {ord("N"), ord("C")}
        assert fast == slow
        assert single.md.handled == queued.md.handled == 400 and single.md.dropped == queued.md.dropped
        assert single.overseer.accounts[1].positions == queued.overseer.accounts[1].positions
        # Every turn's head model wants an order on the warm-up's lopsided one-tick book (the taker an
        # IOC, both join-the-touch models a DAY bid), so every warm-up reached a send; none went out,
        # and nothing piles up in the shadows.
        warmer = single.warmer
        assert warmer.sends == len(grams) and len(warmer.turns) == 3
        assert not warmer.gateway.counts["orders"] and not warmer.gateway.telemetry.rows
        assert not warmer.overseer.orders and not warmer.overseer.working
        for engine in (single, queued):        # only live orders are kept: the map does not grow with the run
            assert len(engine.overseer.orders) <= len(engine.models)
            assert all(order.state != "done" for order in engine.overseer.orders.values())

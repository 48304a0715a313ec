"""A synthetic capture of one trading host, with every latency known (`lab synth`).

The host sits behind one tap ("host-tap"). Inbound, a market-data feed arrives
as UDP multicast datagrams (engine.protocol.md); a fraction of them trigger an
order, sent on a TCP connection to a venue gateway (any registered order protocol:
engine.protocol.registry); the gateway answers with acks, fills and rejects. The capture holds every
frame both ways: the handshake, MD, orders, responses, a few retransmissions and
out-of-order segments, and the closing FINs.

How the timeline is built (all integers, ns, seeded):

- **Wire time** of a frame of L captured bytes (no FCS) at the line rate:
  8 (preamble + SFD) + max(L + 4, 64) bytes, x8 bits / rate, rounded up to a
  whole ns. Frames in one direction never overlap: the next first bit is at
  least the previous first bit + the wire time of its bytes + the 12-byte gap.
- **MD** datagrams arrive at random gaps (bursts and lulls), with at least a
  frame's slot between them; they have the inbound wire first (the feed's
  priority) and are never delayed.
- **Orders.** The tick-to-trade latency is drawn per trigger (lognormal around
  8 us plus a rare tail); the engine is one thread, so an order never leaves
  before the one before it. Most orders are one segment. Some are sent as the
  decision-free prefix (the protocol's `prefix_bytes`) and, once decided, the
  rest: two segments, the prefix first. A few go as two segments swapped on the wire (out of order, as multi-queue NICs
  sometimes do), and a few are retransmitted spuriously a few ms later.
- **Venue.** Each order is answered after a one-way delay and processing: an
  ack, an ack + fill (one segment, or two, the fill later), or a reject. A few
  ack/fill pairs arrive swapped (out of order), a few responses are
  retransmitted, and the host answers those with a duplicate ack (and the venue
  answers the host's retransmissions likewise). Venue frames wait for gaps in
  the feed on the inbound wire.

Truth per trigger (independent of the timestamp convention):
`t_md_ns` the first bit of the MD frame at the tap; `order_first_bit_ns` the
first bit of the first frame on the wire that carries bytes of the order;
`order_last_byte_ns` when the whole order has been on the wire: the latest of
its segments' first bit + wire time (the order's last segment, for in-order
segments); `tick_to_trade_ns = order_first_bit_ns - t_md_ns`.

Timestamps in the file: `hardware` = every frame's first bit at the tap;
`software` = inbound frames at their last bit, outbound at their first bit (as
a host capture stamps them). Frames are written in stamp order.
"""
from lab.synth.generator import CONVENTIONS, TRUTH_COLUMNS, SynthConfig, Synthesis, synthesize
from lab.synth.output import write_capture, write_links, write_truth

__all__ = ["CONVENTIONS", "TRUTH_COLUMNS", "SynthConfig", "Synthesis", "synthesize", "write_capture", "write_links",
           "write_truth"]

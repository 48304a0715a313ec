"""The market data of `lab run --feed`: a source by name, and a capture's MD datagrams.

A capture is read with lab.analysis.decode, which the venue does not import; the synthetic
market and engine logs are lab.venue.market's.
"""
from __future__ import annotations

import os

import numpy as np

from engine.protocol.errors import ProtocolError
from engine.protocol.md import decode_md, decode_md_headers
from lab.analysis.decode import OK, PROTO_UDP, decode
from lab.capture import open_capture
from lab.capture.records import CaptureError
from lab.venue.market import Feed, FeedError, feed_from_log, synthetic_feed


def feed_from_pcap(path, md_flow=None) -> Feed:
    """The MD datagrams of a capture, in capture order: UDP payloads with a valid MD header
    (lab.analysis.decode), whole (not cut by the snaplen); `md_flow` (an Endpoint of
    lab.analysis.measure) keeps only datagrams to that address and port."""
    path = os.fspath(path)
    payloads, skipped = [], 0
    try:
        with open_capture(path) as capture:
            for batch in capture.batches():
                table, md_seq = decode(batch, [i.linktype for i in capture.interfaces], md_seq=True)
                keep = (table.status == OK) & (table.proto == PROTO_UDP) & (md_seq >= 0)
                keep &= table.payload_caplen == table.payload_len
                if md_flow is not None:
                    keep &= (table.dst_ip == md_flow.ip) & (table.dst_port == md_flow.port)
                for row in np.flatnonzero(keep):
                    start = int(table.payload_offset[row])
                    payload = batch.data[start:start + int(table.payload_len[row])].tobytes()
                    try:
                        decode_md(payload)
                    except ProtocolError:
                        skipped += 1
                        continue
                    payloads.append(payload)
    except CaptureError as exc:
        raise FeedError(str(exc)) from None
    if not payloads:
        raise FeedError(f"{path}: no MD datagrams in the capture" + (f" to {md_flow}" if md_flow else ""))
    data = np.frombuffer(b"".join(payloads), np.uint8)
    offsets = np.cumsum([0] + [len(p) for p in payloads[:-1]])
    headers = decode_md_headers(data, offsets)
    return Feed(payloads, headers["seq"].astype(np.uint64), headers["venue"].astype(np.uint16),
                headers["instrument"].astype(np.uint32), f"pcap:{path}", skipped)


def feed_source(spec: str, count: int, seed: int, venues=(1,), payload_bytes: int | None = None) -> Feed:
    """`synthetic` (the default, also for an empty spec), `log:PATH` or `pcap:PATH`."""
    kind, _, path = (spec or "synthetic").partition(":")
    if kind == "synthetic" and not path:
        return synthetic_feed(count, seed, venues=tuple(venues), payload_bytes=payload_bytes)
    if kind == "log" and path:
        return feed_from_log(path)
    if kind == "pcap" and path:
        return feed_from_pcap(path)
    raise FeedError(f"feed source {spec!r}: use synthetic, log:PATH or pcap:PATH")

"""The venue: what the engine trades against over loopback.

- market: where the venue's market-data datagrams come from.
- feed: publishes those datagrams over UDP at their scheduled instants.
- matching: the matching engine, our orders against the venue's published book (queue models).
- gateway: the order gateway, a TCP server that stamps, reassembles and answers orders.
"""

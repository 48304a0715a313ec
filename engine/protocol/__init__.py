"""Wire formats: the MD datagram, binary order entry and fixed-width FIX 4.2.

Layouts are data (engine.protocol.layout); see docs/protocol.md for the bytes.
"""
from engine.protocol.errors import ProtocolError

__all__ = ["ProtocolError"]

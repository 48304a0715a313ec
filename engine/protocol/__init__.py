"""Wire protocols: one module per protocol, each declaring a protocol object that the registry
knows by name (engine.protocol.registry). Layouts are data (engine.protocol.layout);
docs/protocol.md shows the bytes.
"""
from engine.protocol.errors import ProtocolError
from engine.protocol.registry import (md_protocol, md_protocol_names, order_protocol, order_protocol_names,
                                      protocols, register)

__all__ = ["ProtocolError", "md_protocol", "md_protocol_names", "order_protocol", "order_protocol_names",
           "protocols", "register"]

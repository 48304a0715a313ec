"""The one error the wire-format codecs raise for bad bytes."""
from __future__ import annotations


class ProtocolError(ValueError):
    """Bytes that are not a valid message: short, wrong magic, lying lengths, unknown type.

    `offset` is where in the given buffer the problem was found, when known.
    """

    def __init__(self, message: str, offset: int | None = None):
        self.offset = offset
        super().__init__(message if offset is None else f"{message} (at byte {offset})")

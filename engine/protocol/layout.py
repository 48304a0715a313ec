"""Byte layouts as data: a table of fields per message, from which the numpy
structured dtype, the field offsets and the docs table all come.

All integers are little-endian. Gaps between fields are zero padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from engine.protocol.errors import ProtocolError

_TYPE_NAMES = {"u1": "u8", "<u2": "u16", "<u4": "u32", "<u8": "u64", "<i8": "i64"}


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    format: str     # numpy format: "u1", "<u2", "<u4", "<u8", "<i8", "S<n>"
    meaning: str

    @property
    def size(self) -> int:
        return np.dtype(self.format).itemsize

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.format) or f"bytes[{self.size}]"


class Layout:
    """A fixed-size record: its fields at explicit offsets, padded to `size` bytes."""

    def __init__(self, name: str, size: int, fields: list[Field]):
        self.name, self.size, self.fields = name, size, tuple(fields)
        end = 0
        for field in self.fields:
            if field.offset < end:
                raise ValueError(f"{name}: field {field.name} overlaps the one before it")
            end = field.offset + field.size
        if end > size:
            raise ValueError(f"{name}: fields end at {end}, past the size {size}")
        self.dtype = np.dtype({
            "names": [f.name for f in self.fields],
            "formats": [f.format for f in self.fields],
            "offsets": [f.offset for f in self.fields],
            "itemsize": size,
        })

    def offset(self, name: str) -> int:
        return self.dtype.fields[name][1]

    def pack(self, **values) -> bytes:
        """One record from Python values; fields not given and padding are zero."""
        record = np.zeros((), self.dtype)
        for name, value in values.items():
            record[name] = value
        return record.tobytes()

    def table(self) -> str:
        """The layout as a markdown table (offset, size, type, field, meaning)."""
        rows = ["| offset | size | type | field | meaning |", "|---:|---:|---|---|---|"]
        position = 0
        for field in self.fields + (Field("", self.size, "S0", ""),):
            if field.offset > position:
                gap = field.offset - position
                rows.append(f"| {position} | {gap} | bytes[{gap}] | (padding) | zero |")
            if field.name:
                rows.append(f"| {field.offset} | {field.size} | {field.type_name} | "
                            f"`{field.name}` | {field.meaning} |")
            position = field.offset + field.size
        return "\n".join(rows)


def as_bytes_array(data) -> np.ndarray:
    """A 1-d uint8 view of bytes, bytearray, memoryview or a uint8 array."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise TypeError(f"expected a 1-d uint8 array, got {data.dtype} with {data.ndim} dims")
        return data
    return np.frombuffer(data, np.uint8)


def gather(data, offsets, dtype: np.dtype) -> np.ndarray:
    """Records of `dtype` starting at each offset of `data`, as one structured array.

    One fancy-indexing copy over a sliding window view: no loop over records.
    Raises ProtocolError naming the first record that would run past the data.
    """
    data = as_bytes_array(data)
    offsets = np.asarray(offsets, dtype=np.int64)
    size = dtype.itemsize
    bad = (offsets < 0) | (offsets > data.size - size)
    if bad.any():
        first = int(offsets[np.argmax(bad)])
        raise ProtocolError(
            f"a {size}-byte record at offset {first} runs past the {data.size} bytes given", first)
    if offsets.size == 0:
        return np.zeros(0, dtype)
    windows = sliding_window_view(data, size)
    return np.ascontiguousarray(windows[offsets]).view(dtype).reshape(offsets.shape)

"""Byte layouts as data: a table of fields per message, from which the numpy
structured dtype, the struct packer, the field offsets and the docs table all come.

A field's numpy format says its byte order: "<u2" little-endian, ">u2" big-endian (as
real exchange protocols are). Fields may sit at any offset (packed, unaligned). Gaps
between fields are zero padding.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from engine.protocol.errors import ProtocolError

_STRUCT_CODES = {("u", 1): "B", ("u", 2): "H", ("u", 4): "I", ("u", 8): "Q",
                 ("i", 1): "b", ("i", 2): "h", ("i", 4): "i", ("i", 8): "q"}


def _big_endian(dtype: np.dtype) -> bool:
    return dtype.itemsize > 1 and dtype.kind in "iu" and dtype != dtype.newbyteorder("<")


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
        dtype = np.dtype(self.format)
        if dtype.kind not in "iu":
            return f"bytes[{self.size}]"
        return f"{dtype.kind}{8 * dtype.itemsize}" + (" BE" if _big_endian(dtype) else "")

    @property
    def struct_code(self) -> str:
        dtype = np.dtype(self.format)
        return _STRUCT_CODES.get((dtype.kind, dtype.itemsize)) or f"{self.size}s"


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
        self.struct = self._struct()
        self._field_packers = {f.name: (struct.Struct((">" if _big_endian(np.dtype(f.format)) else "<")
                                                      + f.struct_code), f.offset) for f in self.fields}

    def _struct(self) -> struct.Struct:
        """A struct.Struct with the fields in order and the padding as pad bytes."""
        orders = {_big_endian(np.dtype(f.format)) for f in self.fields
                  if np.dtype(f.format).kind in "iu" and np.dtype(f.format).itemsize > 1}
        if len(orders) > 1:
            raise ValueError(f"{self.name}: fields of both byte orders; one struct cannot pack them")
        parts, at = [">" if orders == {True} else "<"], 0
        for f in sorted(self.fields, key=lambda f: f.offset):
            if f.offset > at:
                parts.append(f"{f.offset - at}x")
            parts.append(f.struct_code)
            at = f.offset + f.size
        if self.size > at:
            parts.append(f"{self.size - at}x")
        return struct.Struct("".join(parts))

    def offset(self, name: str) -> int:
        return self.dtype.fields[name][1]

    def pack(self, **values) -> bytes:
        """One record from Python values; fields not given and padding are zero."""
        record = np.zeros((), self.dtype)
        for name, value in values.items():
            record[name] = value
        return record.tobytes()

    def put(self, buffer, name: str, value, at: int = 0) -> None:
        """Write one field of the record at `at` in a writable buffer (its own byte order)."""
        packer, offset = self._field_packers[name]
        packer.pack_into(buffer, at + offset, value)

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

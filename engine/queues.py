"""Seqlocked broadcast queues and vectors in shared memory (Mantra's ICC layer).

Queue: a ring of fixed-size slots. Every consumer sees every message; a producer
never waits for consumers. A consumer knows which slot version it expects for
its next message, so it can tell "not yet written" (lower) from "sped past"
(higher), and it recovers by skipping to the oldest message still in the ring.
With one producer the sequence is local (SPMC); several producers claim
sequence numbers with an atomic fetch-add on the shared head (MPMC).

SeqlockVector: the latest value per key; writers overwrite, readers always see
a whole value.

Any process can attach by name and read, which is how observers work.

Producer and Consumer subclass engine._native's RingWriter and RingReader: a whole
publish, and a whole poll (version check, copy, re-check, sped-past recovery), is one
C call. Consumer.wait_bytes(spins) spins in C for the next message.

Segment layout (all little-endian u64): 0 magic, 8 capacity, 16 slot stride,
24 payload size, 32 dtype fingerprint, 40 owner (the creator's pid), 64 head (next
sequence number, on its own cache line); slots from 128, each [u64 version][payload],
64-byte aligned.

The creator removes its segments when it closes them. One killed outright (SIGKILL) cannot:
sweep_stale_segments removes the segments whose owner has died, and never a live owner's.
"""
from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import stat
import struct
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from engine import _native
from engine.lifeline import is_alive

MAGIC_QUEUE = int.from_bytes(b"WLQUEUE\0", "little")
MAGIC_VECTOR = int.from_bytes(b"WLVECTOR", "little")
HEADER_BYTES = 128
OWNER_OFFSET = 40
HEAD_OFFSET = 64
CACHE_LINE = 64
PREFIX = "wirelab-"
SHM_DIRECTORY = "/dev/shm"


class QueueError(RuntimeError):
    """A queue could not be created or attached (name taken, missing, wrong layout)."""


def fingerprint(dtype: np.dtype) -> int:
    return int.from_bytes(hashlib.blake2b(str(np.dtype(dtype).descr).encode(), digest_size=8).digest(), "little")


class _Attachment:
    """Another process's segment, mapped directly. Unlike SharedMemory on Python < 3.13 it
    does not register with the resource tracker, which would remove the segment when an
    observer exits (or, in a forked child, drop its creator's registration)."""

    def __init__(self, name: str):
        try:
            fd = os.open(f"{SHM_DIRECTORY}/{name}", os.O_RDWR)
        except FileNotFoundError:
            raise QueueError(f"no shared memory named {name!r}") from None
        try:
            self._map = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        self.buf = memoryview(self._map)

    def close(self):
        self.buf.release()
        self._map.close()


class _Segment:
    """A named shared-memory segment with the common header. Owner-only (mode 0600)."""

    def __init__(self, name: str, dtype, create: bool, magic: int, capacity: int):
        self.name, self.dtype = name, np.dtype(dtype)
        self.payload_size = self.dtype.itemsize
        self.stride = -(-(8 + self.payload_size) // CACHE_LINE) * CACHE_LINE
        if create:
            if capacity <= 0 or capacity & (capacity - 1):
                raise QueueError(f"capacity must be a power of two, got {capacity}")
            try:
                self.shm = shared_memory.SharedMemory(PREFIX + name, create=True,
                                                      size=HEADER_BYTES + capacity * self.stride)
            except FileExistsError:
                raise QueueError(f"shared memory {PREFIX + name!r} already exists") from None
            # the owner before the magic: a sweep that sees the magic sees the owner too
            struct.pack_into("<Q", self.shm.buf, OWNER_OFFSET, os.getpid())
            struct.pack_into("<5Q", self.shm.buf, 0, magic, capacity, self.stride, self.payload_size,
                             fingerprint(self.dtype))
            self.owner = True
        else:
            self.shm = _Attachment(PREFIX + name)
            self.owner = False
            found = struct.unpack_from("<5Q", self.shm.buf, 0) if len(self.shm.buf) >= HEADER_BYTES else ()
            if found[:1] != (magic,) or found[2:] != (self.stride, self.payload_size, fingerprint(self.dtype)):
                self.shm.close()
                raise QueueError(f"{PREFIX + name!r} does not hold this kind of {type(self).__name__} or dtype")
            capacity = found[1]
        self.capacity = capacity
        self.buf = self.shm.buf
        # The native calls take raw addresses: pin the mapping's address once.
        self._pin = ctypes.c_char.from_buffer(self.buf)
        self.base = ctypes.addressof(self._pin)
        self.head_address = self.base + HEAD_OFFSET
        self.slots = self.base + HEADER_BYTES       # slot i is at slots + (i & mask) * stride
        self.mask = capacity - 1

    def slot_address(self, index: int) -> int:
        return self.slots + (index & self.mask) * self.stride

    def close(self):
        """Detach; the creator also removes the segment."""
        if self.buf is None:
            return
        del self._pin
        self.buf = self.base = None
        self.shm.close()
        if self.owner:
            self.shm.unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sweep_stale_segments(directory: str = SHM_DIRECTORY) -> list[str]:
    """Remove this user's queue and vector segments whose owner process is gone (a creator
    killed outright cannot remove its own); returns their names. A live owner's segment, a
    segment still being created (no magic yet) and anything else in the directory stay."""
    removed = []
    for path in Path(directory).glob(PREFIX + "*"):
        owner = _owner(path)
        if owner and not is_alive(owner):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _owner(path: Path) -> int | None:
    """The owner pid in a segment's header, or None if it is not a whole segment of this user's."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_size < HEADER_BYTES:
            return None
        header = os.read(fd, HEADER_BYTES)
    finally:
        os.close(fd)
    if len(header) < HEADER_BYTES or struct.unpack_from("<Q", header, 0)[0] not in (MAGIC_QUEUE, MAGIC_VECTOR):
        return None
    return struct.unpack_from("<Q", header, OWNER_OFFSET)[0] or None


class Queue(_Segment):
    def __init__(self, name: str, dtype, capacity: int = 1 << 12, create: bool = True):
        super().__init__(name, dtype, create, MAGIC_QUEUE, capacity)

    @classmethod
    def attach(cls, name: str, dtype) -> "Queue":
        return cls(name, dtype, create=False)

    def head(self) -> int:
        """The next sequence number to be claimed (all below it are claimed)."""
        return _native.load_acquire(self.head_address)

    def producer(self, shared: bool = False) -> "Producer":
        return Producer(self, shared)

    def consumer(self, from_start: bool = False) -> "Consumer":
        return Consumer(self, 0 if from_start else self.head())


class Producer(_native.RingWriter):
    """Publishes into a Queue. shared=True for MPMC (several producers on one queue).

    publish(payload) -> sequence number, one C call for bytes (engine._native.RingWriter);
    `seq` is the next SPMC sequence number, `lapped` counts MPMC messages dropped because
    a later lap already took their slot."""

    def __init__(self, queue: Queue, shared: bool = False):
        super().__init__(queue.head_address, queue.slots, queue.capacity, queue.stride, queue.payload_size,
                         shared, queue.head())
        self.queue = queue

    def _as_bytes(self, payload) -> bytes:
        """publish's conversion of anything but bytes: a buffer, or a record of the queue's dtype."""
        if isinstance(payload, (bytearray, memoryview)):
            return bytes(payload)
        return np.asarray(payload, self.queue.dtype).tobytes()


class Consumer(_native.RingReader):
    """Reads every message of a Queue in order, without affecting the producer or other consumers.

    poll_bytes() -> the next message's bytes or None, one C call (engine._native.RingReader)
    that also recovers from being sped past; wait_bytes(spins) spins in C for the next
    message. `seq` is the next message to read, `missed` counts messages skipped after
    being sped past."""

    def __init__(self, queue: Queue, start: int):
        super().__init__(queue.head_address, queue.slots, queue.capacity, queue.stride, queue.payload_size, start)
        self.queue = queue

    def poll(self):
        """The next message as a record of the queue's dtype, or None."""
        raw = self.poll_bytes()
        return None if raw is None else np.frombuffer(raw, dtype=self.queue.dtype)[0]


class SeqlockVector(_Segment):
    """The latest value per key (0 .. capacity-1). One writer per key; any number of readers."""

    def __init__(self, name: str, dtype, capacity: int = 64, create: bool = True):
        super().__init__(name, dtype, create, MAGIC_VECTOR, capacity)

    @classmethod
    def attach(cls, name: str, dtype) -> "SeqlockVector":
        return cls(name, dtype, create=False)

    def _address(self, key: int) -> int:
        if not 0 <= key < self.capacity:
            raise IndexError(f"key {key} outside 0..{self.capacity - 1}")
        return self.slots + key * self.stride

    def version(self, key: int) -> int:
        """Even: writes so far x 2; odd: being written now."""
        return _native.load_acquire(self._address(key))

    def write(self, key: int, payload) -> None:
        data = bytes(payload) if isinstance(payload, (bytes, bytearray)) else np.asarray(payload, self.dtype).tobytes()
        if len(data) != self.payload_size:
            raise ValueError(f"value is {len(data)} bytes; the vector's dtype is {self.payload_size}")
        _native.vector_write(self._address(key), data)

    def read_bytes(self, key: int) -> tuple[int, bytes] | None:
        """(writes so far, latest value's bytes), or None if never written."""
        return _native.vector_read(self._address(key), self.payload_size)

    def read(self, key: int):
        """(writes so far, record) of the latest value, or None if never written."""
        got = self.read_bytes(key)
        return None if got is None else (got[0], np.frombuffer(got[1], dtype=self.dtype)[0])

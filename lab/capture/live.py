"""Live capture on a Linux interface (root): AF_PACKET, a TPACKET_V3 ring, kernel ns stamps.

    with LiveCapture("lo", ports=(9000, 9001), out="run.pcapng") as capture:
        ...                                  # traffic
    capture.stats                            # {"packets", "drops", "kernel_drops", "queue_freezes"}

How it works:
- The socket opens with protocol 0 (it receives nothing), gets its ring and a
  classic BPF filter, and only then is bound to the interface with ETH_P_ALL:
  no packet reaches it before the filter is in place.
- The filter (run by the kernel, so unrelated packets are never copied) keeps
  IPv4/IPv6 TCP and UDP packets with a source or destination port in `ports`
  (all packets if `ports` is empty), and the chosen directions by sll_pkttype.
  On `lo` the kernel shows each packet twice: outgoing (at dev_queue_xmit) and
  incoming (at netif_rx). By default only the outgoing copy is kept there.
- Each packet carries a kernel CLOCK_REALTIME stamp in ns. SO_TIMESTAMPNS on the
  socket turns on the kernel's skb stamping, so it is the skb's stamp: taken when
  an outgoing packet is handed to the taps, or in netif_rx for an incoming one.
  An skb carrying TCP's departure time instead (a monotonic stamp: incoming TCP
  on lo) is stamped when the ring receives it.
- A background thread sleeps in poll() and drains retired ring blocks: a block
  is copied out whole and handed back to the kernel at once, its packet
  headers are found by following tp_next_offset (the one per-packet Python
  step: a chain, each header says where the next starts) and turned into
  numpy columns in one gather.
- stop() unbinds the socket (the kernel finishes deliveries in flight first),
  reads PACKET_STATISTICS, drains the ring including the block the kernel was
  still filling, and accounts for every packet the filter accepted.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import select
import socket
import struct
import threading

import numpy as np

from lab.capture.records import INBOUND, OUTBOUND, CaptureError, Interface, PacketBatch
from lab.capture.writer import PcapngWriter

log = logging.getLogger(__name__)

# --- linux/if_packet.h, linux/if_ether.h, asm/socket.h ---------------------------
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4             # sll_pkttype; the others (HOST, BROADCAST, ...) are inbound
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772           # lo frames carry a 14-byte Ethernet header too
LINKTYPE_ETHERNET = 1

# struct tpacket_req3: block_size, block_nr, frame_size, frame_nr, retire_blk_tov,
# sizeof_priv, feature_req_word
TPACKET_REQ3 = struct.Struct("<7I")
# struct tpacket_stats_v3: tp_packets (accepted, drops included), tp_drops, tp_freeze_q_cnt
TPACKET_STATS_V3 = struct.Struct("<3I")
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status,
# num_pkts, offset_to_first_pkt, blk_len, seq_num (the timestamps after it are not read)
BLOCK_DESCRIPTOR = struct.Struct("<IIIIIIQ")
BLOCK_STATUS_AT = 8
RING_FRAME_BYTES = 2048         # V3 packs packets back to back; frame_size only passes the kernel's checks
# The fields read of struct tpacket3_hdr (48 bytes with padding) and of the
# struct sockaddr_ll after it (at TPACKET_ALIGN(48)); next_offset is at 0.
TPACKET3_HEADER = np.dtype({
    "names": ["sec", "nsec", "snaplen", "len", "mac", "pkttype"],
    "formats": ["<u4", "<u4", "<u4", "<u4", "<u2", "u1"],
    "offsets": [4, 8, 12, 16, 24, 48 + 10],
    "itemsize": 48 + 20,
})
V3_ALIGNMENT = 8            # packets in a V3 block start 8-byte aligned

# --- classic BPF (linux/filter.h) ---------------------------------------------
SOCK_FILTER = struct.Struct("<HBBI")    # code, jt, jf, k
SOCK_FPROG = struct.Struct("<H6xQ")     # len, pointer to the instructions
LDB_ABS, LDH_ABS, LDH_IND, LDXB_MSH = 0x30, 0x28, 0x48, 0xB1
JEQ, JSET, RET = 0x15, 0x45, 0x06
SKF_AD_PKTTYPE = 0xFFFFF000 + 4         # SKF_AD_OFF + SKF_AD_PKTTYPE
MAX_JUMP = 255
# Where the filter looks in an Ethernet frame (headers as data).
ETHERTYPE_AT = 12
ETHERTYPE_IPV4, ETHERTYPE_IPV6 = 0x0800, 0x86DD
IPPROTO_TCP, IPPROTO_UDP = 6, 17
IPV4_AT = 14
IPV4_FRAGMENT_AT, IPV4_FRAGMENT_OFFSET_MASK = IPV4_AT + 6, 0x1FFF
IPV4_PROTOCOL_AT = IPV4_AT + 9
IPV6_NEXT_HEADER_AT = 14 + 6
IPV6_PORTS_AT = 14 + 40          # no extension headers
SOURCE_PORT, DESTINATION_PORT = 0, 2  # within the TCP or UDP header

DIRECTIONS = ("outgoing", "incoming", "both")
DEFAULT_SNAPLEN = 262144
DEFAULT_RING_BYTES = 32 << 20
DEFAULT_BLOCK_BYTES = 1 << 20
BLOCK_TIMEOUT_MS = 10           # a partly filled block is handed over after this long


class LiveCapture:
    """AF_PACKET capture of one interface in a background thread, started by start() and
    stopped by stop() (or used as a context manager).

    - ports: TCP/UDP ports to keep (source or destination); empty keeps every packet.
    - out: a pcapng path (one interface named `name`, default the interface), or None
      to collect in memory: `batch` is a PacketBatch after stop().
    - directions: "outgoing", "incoming" or "both"; None means "outgoing" on a
      loopback interface (where each packet is seen twice) and "both" elsewhere.
    - ring_bytes / block_bytes: the TPACKET_V3 ring (block_bytes a power of two,
      at least a page; packets longer than a block are cut).

    stats after stop(): packets captured, drops (every accepted packet not
    captured: kernel_drops plus any the ring held but could not be read),
    kernel_drops (tp_drops: no room in the ring), queue_freezes (tp_freeze_q_cnt:
    times the ring was full). Drops are logged as a warning on lab.capture.live.
    """

    def __init__(self, interface: str = "lo", ports=(), out=None, snaplen: int = DEFAULT_SNAPLEN,
                 directions: str | None = None, name: str | None = None,
                 ring_bytes: int = DEFAULT_RING_BYTES, block_bytes: int = DEFAULT_BLOCK_BYTES):
        self.ports = _checked_ports(ports)
        if not 1 <= snaplen <= DEFAULT_SNAPLEN:
            raise CaptureError(f"snaplen must be 1..{DEFAULT_SNAPLEN}, not {snaplen}")
        if (block_bytes < mmap.PAGESIZE or block_bytes & (block_bytes - 1)
                or ring_bytes < block_bytes or ring_bytes % block_bytes):
            raise CaptureError("block_bytes must be a power of two >= a page, and ring_bytes "
                               "a multiple of it")
        self.interface_name = interface
        hardware_type = _hardware_type(interface)
        if directions is None:
            directions = "outgoing" if hardware_type == ARPHRD_LOOPBACK else "both"
        if directions not in DIRECTIONS:
            raise CaptureError(f"directions must be one of {', '.join(DIRECTIONS)}, not {directions!r}")
        self.directions = directions
        self.snaplen = snaplen
        self._program = filter_program(self.ports, directions, snaplen)
        self.out = None if out is None else os.fspath(out)
        self.interface = Interface(
            linktype=LINKTYPE_ETHERNET, tsresol="1e-9", snaplen=snaplen, name=name or interface,
            description=f"capture point {interface} ({directions} copies): kernel software stamps, "
                        "AF_PACKET")
        self._block_bytes = block_bytes
        self._block_count = ring_bytes // block_bytes
        self._sock: socket.socket | None = None
        self._ring: mmap.mmap | None = None
        self._writer: PcapngWriter | None = None
        self._wake_fd = -1
        self._started = False
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        self._parts: list[PacketBatch] = []
        self._cursor = 0           # next ring block to read
        self._last_seq = 0         # seq_num of the last block read (the kernel numbers blocks from 1)
        self._kernel = None        # (accepted, kernel_drops, queue_freezes) from PACKET_STATISTICS
        self._captured = 0
        self.batch: PacketBatch | None = None

    # --- public -------------------------------------------------------------

    def start(self) -> LiveCapture:
        if self._started:
            raise CaptureError("a LiveCapture runs once; make a new one")
        self._started = True
        try:
            self._sock = _packet_socket(self.interface_name)
            self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frames = self._block_bytes // RING_FRAME_BYTES * self._block_count
            self._sock.setsockopt(SOL_PACKET, PACKET_RX_RING, TPACKET_REQ3.pack(
                self._block_bytes, self._block_count, RING_FRAME_BYTES, frames, BLOCK_TIMEOUT_MS, 0, 0))
            self._ring = mmap.mmap(self._sock.fileno(), self._block_bytes * self._block_count)
            _attach_filter(self._sock, self._program)
            if self.out is not None:
                self._writer = PcapngWriter(self.out, [self.interface])
            self._wake_fd = os.eventfd(0)
            self._sock.bind((self.interface_name, ETH_P_ALL))
        except OSError as exc:
            self._release()
            self._close_wake_fd()
            where = f" ({exc.filename})" if exc.filename else ""
            raise CaptureError(f"cannot capture on {self.interface_name}: "
                               f"{exc.strerror or exc}{where}") from None
        except BaseException:
            self._release()
            self._close_wake_fd()
            raise
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.interface_name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        """Stop, flush everything the kernel accepted, and return stats (idempotent)."""
        if self._thread is None:
            return self.stats
        self._stopping.set()
        os.eventfd_write(self._wake_fd, 1)
        self._thread.join()
        self._thread = None
        self._close_wake_fd()
        if self._failure is not None:
            raise self._failure
        if self.out is None:
            self.batch = _concatenate(self._parts)
            self._parts = []
        stats = self.stats
        if stats["drops"]:
            log.warning("capture on %s DROPPED %d of %d packets (ring full %d times); "
                        "enlarge ring_bytes or lower the rate", self.interface_name, stats["drops"],
                        stats["packets"] + stats["drops"], stats["queue_freezes"])
        return stats

    @property
    def stats(self) -> dict:
        """Packets captured so far; drop counts are known once stop() has read the kernel's."""
        accepted, kernel_drops, freezes = self._kernel or (self._captured, 0, 0)
        return {"packets": self._captured, "drops": accepted - self._captured,
                "kernel_drops": kernel_drops, "queue_freezes": freezes}

    def __enter__(self) -> LiveCapture:
        return self.start()

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.stop()
            return
        try:  # the body's exception (an interrupt, say) is the one to propagate
            self.stop()
        except Exception as failure:
            log.error("capture on %s also failed: %s", self.interface_name, failure)

    # --- the capture thread -------------------------------------------------

    def _run(self) -> None:
        try:
            poller = select.poll()
            poller.register(self._sock, select.POLLIN | select.POLLERR)
            poller.register(self._wake_fd, select.POLLIN)
            while not self._stopping.is_set():
                self._read_retired_blocks()
                for fd, events in poller.poll():
                    if events & select.POLLERR and fd == self._sock.fileno():
                        error = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        raise CaptureError(f"capture on {self.interface_name}: {os.strerror(error)}")
            self._finish()
        except BaseException as exc:  # re-raised by stop() in the caller's thread
            self._failure = exc
        finally:
            self._release()

    def _finish(self) -> None:
        # Unbinding (protocol 0) unhooks the socket and waits for deliveries in
        # flight (synchronize_net), so the counts below are final.
        self._sock.bind((self.interface_name, 0))
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS_V3.size)
        accepted, kernel_drops, freezes = TPACKET_STATS_V3.unpack(raw)
        self._read_retired_blocks()
        # The block the kernel was filling is still its own, but nothing writes it
        # any more. A block handed back earlier keeps its old seq_num until reused.
        base = self._cursor * self._block_bytes
        # (The retire timer may hand it over meanwhile: its status does not matter.)
        _v, _p, _status, count, first, length, seq = BLOCK_DESCRIPTOR.unpack_from(self._ring, base)
        if count and seq > self._last_seq:
            self._take(self._ring[base:base + length], count, first)
        self._kernel = (accepted, kernel_drops, freezes)

    def _read_retired_blocks(self) -> None:
        ring, size = self._ring, self._block_bytes
        while True:
            base = self._cursor * size
            _v, _p, status, count, first, length, seq = BLOCK_DESCRIPTOR.unpack_from(ring, base)
            if not status & TP_STATUS_USER:
                return
            block = ring[base:base + length]
            ring[base + BLOCK_STATUS_AT:base + BLOCK_STATUS_AT + 4] = TP_STATUS_KERNEL.to_bytes(4, "little")
            self._last_seq = seq
            self._cursor = (self._cursor + 1) % self._block_count
            self._take(block, count, first)

    def _take(self, block: bytes, count: int, first: int) -> None:
        """Turn one copied ring block into a PacketBatch and write or keep it."""
        if count == 0:
            return
        words = memoryview(block)[:len(block) & ~3].cast("I")  # tp_next_offset is the header's first u32
        starts = []
        append = starts.append
        at = first >> 2
        try:
            for _ in range(count):  # the header chain: per packet by nature, kept minimal
                append(at)
                at += words[at] >> 2
        except IndexError:
            raise CaptureError(f"capture on {self.interface_name}: a ring block's header chain "
                               "runs past its end") from None
        finally:
            words.release()
        data = np.frombuffer(block, np.uint8)
        starts = np.array(starts, np.int64) << 2
        if starts[-1] + TPACKET3_HEADER.itemsize > len(data) or (starts % V3_ALIGNMENT).any():
            raise CaptureError(f"capture on {self.interface_name}: a ring block has a misplaced header")
        header = {name: _gather_field(data, starts, offset, dtype)
                  for name, (dtype, offset) in TPACKET3_HEADER.fields.items()}
        offset = starts + header["mac"]
        caplen = header["snaplen"]
        ends = offset + caplen
        if ((header["mac"] < TPACKET3_HEADER.itemsize).any() or (ends[:-1] > starts[1:]).any()
                or ends[-1] > len(data)):
            raise CaptureError(f"capture on {self.interface_name}: a ring block's packets overlap "
                               "or overrun it")
        frames, offset = _back_to_back(data, offset, caplen)
        batch = PacketBatch(
            data=frames, offset=offset, caplen=caplen, wire_len=header["len"],
            ts_ns=header["sec"].astype(np.int64) * 1_000_000_000 + header["nsec"],
            interface=np.zeros(count, np.uint16),
            direction=np.where(header["pkttype"] == PACKET_OUTGOING, OUTBOUND, INBOUND).astype(np.int8))
        if self._writer is not None:
            self._writer.write_batch(0, batch.ts_ns, batch, batch.direction)
        else:
            self._parts.append(batch)
        self._captured += count

    def _close_wake_fd(self) -> None:
        """The eventfd is the caller's side: closed only once the thread is done with it."""
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def _release(self) -> None:
        """Close the socket, ring and file (the thread's side); safe to call more than once."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def filter_program(ports: tuple[int, ...], directions: str, snaplen: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF: keep `directions` and, if ports are given, IPv4/IPv6 TCP/UDP with a
    port in `ports` (not IPv4 fragments after the first: they carry no ports).
    Returns (code, jt, jf, k) instructions; an accepted packet is cut to snaplen."""
    program: list[list] = []
    labels: dict[str, int] = {}

    def emit(code, k, jt=0, jf=0):
        program.append([code, jt, jf, k])

    if directions != "both":
        emit(LDB_ABS, SKF_AD_PKTTYPE)
        emit(JEQ, PACKET_OUTGOING, *((0, "drop") if directions == "outgoing" else ("drop", 0)))
    if not ports:
        emit(RET, snaplen)
    else:
        emit(LDH_ABS, ETHERTYPE_AT)
        emit(JEQ, ETHERTYPE_IPV4, "ipv4", 0)
        emit(JEQ, ETHERTYPE_IPV6, "ipv6", "drop")
        labels["ipv4"] = len(program)
        emit(LDB_ABS, IPV4_PROTOCOL_AT)
        emit(JEQ, IPPROTO_TCP, "ipv4 ports", 0)
        emit(JEQ, IPPROTO_UDP, "ipv4 ports", "drop")
        labels["ipv4 ports"] = len(program)
        emit(LDH_ABS, IPV4_FRAGMENT_AT)
        emit(JSET, IPV4_FRAGMENT_OFFSET_MASK, "drop", 0)
        emit(LDXB_MSH, IPV4_AT)                  # X = IPv4 header length
        for field in (SOURCE_PORT, DESTINATION_PORT):
            emit(LDH_IND, IPV4_AT + field)
            for port in ports:
                emit(JEQ, port, "accept", 0)
        emit(RET, 0)
        labels["ipv6"] = len(program)
        emit(LDB_ABS, IPV6_NEXT_HEADER_AT)
        emit(JEQ, IPPROTO_TCP, "ipv6 ports", 0)
        emit(JEQ, IPPROTO_UDP, "ipv6 ports", "drop")
        labels["ipv6 ports"] = len(program)
        for field in (SOURCE_PORT, DESTINATION_PORT):
            emit(LDH_ABS, IPV6_PORTS_AT + field)
            for port in ports:
                emit(JEQ, port, "accept", 0)
    labels["drop"] = len(program)
    emit(RET, 0)
    labels["accept"] = len(program)
    emit(RET, snaplen)
    for index, instruction in enumerate(program):
        for slot in (1, 2):
            if isinstance(instruction[slot], str):
                instruction[slot] = labels[instruction[slot]] - index - 1
                if instruction[slot] > MAX_JUMP:
                    raise CaptureError(f"too many ports for one filter ({len(ports)})")
    return [tuple(instruction) for instruction in program]


def _checked_ports(ports) -> tuple[int, ...]:
    try:
        ports = tuple(sorted({int(p) for p in ports}))
    except (TypeError, ValueError):
        raise CaptureError(f"ports must be a list of port numbers: {ports!r}") from None
    if any(not 0 < p < 65536 for p in ports):
        raise CaptureError(f"ports must be 1..65535: {ports}")
    return ports


def _hardware_type(interface: str) -> int:
    """ARPHRD_* of the interface; CaptureError for an unknown one or a link type without
    an Ethernet header (the filter's offsets assume one)."""
    try:
        socket.if_nametoindex(interface)
        with open(f"/sys/class/net/{interface}/type") as f:
            hardware_type = int(f.read())
    except (OSError, ValueError):
        raise CaptureError(f"no network interface named {interface!r}") from None
    if hardware_type not in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
        raise CaptureError(f"{interface}: link type {hardware_type} is not Ethernet or loopback")
    return hardware_type


def _packet_socket(interface: str) -> socket.socket:
    """An AF_PACKET raw socket that receives nothing until bound with a protocol."""
    try:
        return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except AttributeError:
        raise CaptureError("live capture needs Linux AF_PACKET sockets") from None
    except PermissionError:
        raise CaptureError(f"live capture on {interface} needs root (CAP_NET_RAW)") from None


def _attach_filter(sock: socket.socket, program) -> None:
    code = ctypes.create_string_buffer(b"".join(SOCK_FILTER.pack(*i) for i in program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    SOCK_FPROG.pack(len(program), ctypes.addressof(code)))


def _gather_field(data: np.ndarray, starts: np.ndarray, offset: int, dtype: np.dtype) -> np.ndarray:
    """The field at starts + offset of every header (headers start 8-byte aligned and
    no field is wider, so each is aligned to its size: one gather through a typed view)."""
    size = dtype.itemsize
    return data[:len(data) - len(data) % size].view(dtype)[(starts + offset) // size]


def _back_to_back(data: np.ndarray, start: np.ndarray, length: np.ndarray):
    """(the bytes data[start[i]:start[i] + length[i]] of all i back to back, their new
    offsets). A boolean mask of alternating gap / frame runs: no per-byte index array."""
    ends = start + length
    runs = np.empty(2 * len(start) + 1, np.int64)
    runs[0:-1:2] = start - np.concatenate(([0], ends[:-1]))
    runs[1::2] = length
    runs[-1] = len(data) - ends[-1]
    in_frame = np.zeros(len(runs), bool)
    in_frame[1::2] = True
    return data[np.repeat(in_frame, runs)], np.cumsum(length, dtype=np.int64) - length


def _concatenate(parts: list[PacketBatch]) -> PacketBatch:
    """One batch over the blocks' bytes, back to back."""
    sizes = np.array([len(p.data) for p in parts], np.int64)
    base = np.cumsum(sizes) - sizes
    columns = {name: np.concatenate([np.zeros(0, dtype)] + [getattr(p, name) for p in parts])
               for name, dtype in (("caplen", np.uint32), ("wire_len", np.uint32), ("ts_ns", np.int64),
                                   ("interface", np.uint16), ("direction", np.int8))}
    offset = np.concatenate([np.zeros(0, np.int64)] + [p.offset + b for p, b in zip(parts, base)])
    data = np.concatenate([np.zeros(0, np.uint8)] + [p.data for p in parts])
    return PacketBatch(data=data, offset=offset, **columns)

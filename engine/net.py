"""Sockets with kernel timestamps (SO_TIMESTAMPING), for the engine and the venue.

- UDP receive: each datagram comes with the kernel's software RX stamp
  (taken when the driver hands the packet to the stack).
- TCP send: TCP_NODELAY; each send() is stamped when the driver passes it on
  (SCM_TSTAMP_SND). Stamps come back on MSG_ERRQUEUE, keyed by the byte count
  (SOF_TIMESTAMPING_OPT_ID): the id of a send is the stream offset of its last byte.
- TCP receive: SO_TIMESTAMPING RX stamps on stream data (the stamp of the
  segment that completed the read).

Every stamp is integer nanoseconds of CLOCK_REALTIME, as the kernel gives it. The
kernel switches software stamping on asynchronously when the first socket asks for it,
so a packet in the first moments after that may arrive without a stamp (None).
"""
from __future__ import annotations

import errno
import socket
import struct

SO_TIMESTAMPING = 37
SCM_TIMESTAMPING = SO_TIMESTAMPING
SOF_TIMESTAMPING_TX_SOFTWARE = 1 << 1
SOF_TIMESTAMPING_RX_SOFTWARE = 1 << 3
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_OPT_ID = 1 << 7
SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11
SO_EE_ORIGIN_TIMESTAMPING = 4
SCM_TSTAMP_SND = 0
IP_RECVERR = 11

RX_FLAGS = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
TX_FLAGS = SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID \
    | SOF_TIMESTAMPING_OPT_TSONLY

_TIMESPECS = struct.Struct("<6q")          # struct scm_timestamping: three timespecs
_EXTENDED_ERR = struct.Struct("<IBBBBII")  # struct sock_extended_err
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPECS.size) + socket.CMSG_SPACE(_EXTENDED_ERR.size + 16)


def software_stamp(data: bytes) -> int | None:
    """ts[0] of a struct scm_timestamping in ns, or None when the kernel left it zero."""
    sec, nsec = _TIMESPECS.unpack_from(data)[:2]
    return sec * 1_000_000_000 + nsec if sec or nsec else None


def udp_receiver(host: str = "127.0.0.1", port: int = 0, rcvbuf: int = 1 << 22) -> socket.socket:
    """A bound, non-blocking UDP socket that gets kernel RX stamps."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, RX_FLAGS)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def recv_stamped(sock: socket.socket, bufsize: int = 65536) -> tuple[bytes, int | None] | None:
    """(payload, kernel RX ns) of the next datagram or stream chunk, or None if nothing is waiting."""
    try:
        data, ancillary, _flags, _addr = sock.recvmsg(bufsize, _CMSG_SPACE)
    except BlockingIOError:
        return None
    stamp = None
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPING:
            stamp = software_stamp(value)
    return data, stamp


def enable_rx_stamps(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, RX_FLAGS)


def enable_tx_stamps(sock: socket.socket) -> None:
    """Stamp every send(); call before the first send so ids count from byte 0."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TX_FLAGS)


def tcp_connect(host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A connected TCP socket with TCP_NODELAY and TX stamps, left non-blocking."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    enable_tx_stamps(sock)
    sock.setblocking(False)
    return sock


def tx_stamps(sock: socket.socket) -> list[tuple[int, int]]:
    """Drain MSG_ERRQUEUE: [(id, kernel TX ns)]. For TCP the id is the offset of the
    last byte of the send() it stamps (bytes sent before it + its length - 1)."""
    stamps = []
    while True:
        try:
            _data, ancillary, _flags, _addr = sock.recvmsg(1, _CMSG_SPACE, socket.MSG_ERRQUEUE)
        except BlockingIOError:
            return stamps
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return stamps
            raise
        stamp = key = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPING:
                stamp = software_stamp(value)
            elif level in (socket.SOL_IP, socket.IPPROTO_IPV6) and len(value) >= _EXTENDED_ERR.size:
                _errno, origin, _t, _c, _p, info, data = _EXTENDED_ERR.unpack_from(value)
                if origin == SO_EE_ORIGIN_TIMESTAMPING and info == SCM_TSTAMP_SND:
                    key = data
        if stamp is not None and key is not None:
            stamps.append((key, stamp))

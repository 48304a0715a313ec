"""pcap and pcapng layouts as data (dpkt style): magics, block types, option codes.

Byte order is not fixed in these files, so record layouts are given without it;
`layout.newbyteorder(order)` gives the one a file uses.
"""
from __future__ import annotations

import numpy as np

# An int64 ns stamp that no packet can have: a packet without a timestamp (SPB)
# or one whose timestamp does not fit int64 ns.
NO_TIMESTAMP = np.iinfo(np.int64).min

# --- pcap ---------------------------------------------------------------------
# magic as read little-endian -> (byte order of the file, nanosecond stamps)
PCAP_MAGICS: dict[int, tuple[str, bool]] = {
    0xA1B2C3D4: ("<", False),
    0xD4C3B2A1: (">", False),
    0xA1B23C4D: ("<", True),
    0x4D3CB2A1: (">", True),
}
PCAP_NANOSECOND_MAGIC = 0xA1B23C4D

PCAP_FILE_HEADER = np.dtype([
    ("magic", "u4"), ("version_major", "u2"), ("version_minor", "u2"),
    ("thiszone", "i4"), ("sigfigs", "u4"), ("snaplen", "u4"), ("network", "u4"),
])
PCAP_RECORD_HEADER = np.dtype([
    ("ts_sec", "u4"), ("ts_frac", "u4"), ("caplen", "u4"), ("wire_len", "u4"),
])
# The link-layer header type is the low 26 bits of `network` (the top 6: FCS info).
PCAP_LINKTYPE_MASK = 0x03FFFFFF
# Bits 16-25 of `network` are reserved and must be zero: Wireshark and current
# libpcap refuse a file where they are not (libpcap's test file
# linktype-reserved-field-not-zero.pcap; libpcap 1.10.3 still read it).
PCAP_LINKTYPE_RESERVED = 0x03FF0000
# DG/UX tcpdump wrote version 543.0; libpcap and Wireshark read it (lengths swapped).
PCAP_VERSION_DGUX = (543, 0)

# The largest caplen of a record, per link type: libpcap's max_snaplen_for_dlt()
# (pcap-common.c). A pcap record may have a caplen above the file's snaplen (libpcap
# and Wireshark read it) but not above this. The link types here are in the range
# where LINKTYPE_ and DLT_ values are equal.
MAX_SNAPLEN = 262144  # libpcap's MAXIMUM_SNAPLEN
MAX_SNAPLEN_BY_LINKTYPE: dict[int, int] = {
    231: 128 * 1024 * 1024,  # D-Bus
    249: 1024 * 1024,        # USBPcap
    279: 8 * 1024 * 1024,    # Elektrobit EBHSCR
}


def max_caplen(linktype: int) -> int:
    """The largest caplen libpcap accepts for a record of this link type."""
    return MAX_SNAPLEN_BY_LINKTYPE.get(linktype, MAX_SNAPLEN)

# --- pcapng ---------------------------------------------------------------------
# Blocks Python reads or writes. The packet blocks (EPB 6, SPB 3, obsolete PB 2)
# are walked in _walk.c, which skips every other block (NRB, ISB, CB, DCB, ...).
BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

SHB_FIXED = np.dtype([
    ("block_type", "u4"), ("block_len", "u4"), ("byte_order_magic", "u4"),
    ("version_major", "u2"), ("version_minor", "u2"), ("section_len", "i8"),
])
IDB_FIXED = np.dtype([
    ("block_type", "u4"), ("block_len", "u4"), ("linktype", "u2"), ("reserved", "u2"),
    ("snaplen", "u4"),
])
EPB_FIXED = np.dtype([
    ("block_type", "u4"), ("block_len", "u4"), ("interface", "u4"), ("ts_high", "u4"),
    ("ts_low", "u4"), ("caplen", "u4"), ("wire_len", "u4"),
])
OPTION_HEADER = np.dtype([("code", "u2"), ("length", "u2")])

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
IF_TSOFFSET = 14
EPB_FLAGS = 2
DEFAULT_TSRESOL = 6  # no if_tsresol option: microseconds

# The interface table handed to the C walk, one row per IDB of the current
# section; must match interface_t in _walk.c.
INTERFACE_TABLE_DTYPE = np.dtype([
    ("tsoffset_s", "=i8"), ("snaplen", "=u4"), ("global_index", "=u2"),
    ("pow2", "u1"), ("exponent", "u1"),
])
assert INTERFACE_TABLE_DTYPE.itemsize == 16

# --- link types (www.tcpdump.org/linktypes.html) --------------------------------
# Names of the link types the issue asks for. A capture of any other link type
# reads fine (its Interface keeps the number); analysis decides what it decodes.
LINKTYPE_NAMES: dict[int, str] = {
    0: "null",          # BSD loopback: 4-byte address family in host order
    1: "ethernet",      # incl. 802.1Q tags
    101: "raw",         # raw IP (v4 or v6)
    113: "linux-sll",   # Linux cooked capture v1 (`any`)
    228: "ipv4",        # raw IPv4
    276: "linux-sll2",  # Linux cooked capture v2 (`any`)
}


def tsresol_text(pow2: bool, exponent: int) -> str:
    """The Interface.tsresol spelling: "1e-9", "2^-20"."""
    return f"2^-{exponent}" if pow2 else f"1e-{exponent}"

"""Packet-level model of the wire. Pure computation: no sockets, no files."""

"""Many capture files read as one capture, packets in the order `mergecap -w out.pcapng FILES` writes them.

mergecap's chronological merge (Wireshark wiretap/merge.c, merge_read_packet) is
greedy: over the files' next packets it takes

- the first (lowest argument index) whose packet has no timestamp, at once;
- else the earliest timestamp, and on equal stamps the file given *last*
  (its comparison `is_earlier` is `<=` and it scans the files in argument order).

A file need not be in time order inside, so the greedy choice is not a sort by
timestamp. It is a stable sort by (key, rank, position in file) where

- key is the running maximum of the file's stamps up to the packet (a packet
  without a stamp keeps the key before it; NO_TIMESTAMP before the first stamp);
- rank breaks ties between files: n - 1 - index for a stamped key (the last
  file first) and index for the packets before a file's first stamp (those go
  out at the very start, the first file first).

Because every file's keys never decrease, the sort can run as a stream: a file
whose next unread packet has key k cannot contribute anything before (k, rank),
so the rows at or below the smallest such bound over all unfinished files are
final. Files that do not overlap in time are then read one after the other in
time order (the order of their first stamps, whatever their names), and their
batches go out as they are, without copying packet bytes; only a batch that
holds packets of several files (interleaved, or across a boundary between
files) copies each file's byte span into a new buffer. The merge needs from each
file only its batches and the running maximum before them, so it can run as well
on byte ranges of the files (a partition of the archive by time).

Interfaces follow mergecap's default (-I all): when every file has the same
interfaces (link type, resolution, snaplen, and name and description where both
have one), the merged list is the first file's and a packet keeps its index;
otherwise the lists are concatenated in argument order. Interfaces a pcapng
defines after its first packet are appended when met.
"""
from __future__ import annotations

import glob
import os
import stat
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from lab.capture.formats import NO_TIMESTAMP
from lab.capture.reader import COLUMN_DTYPES, Capture, open_capture
from lab.capture.records import CaptureError, Damage, Interface, PacketBatch, skipped_report


def expand_paths(paths) -> list[str]:
    """Capture files named by `paths`: files as given, directories as their regular files (sorted,
    not recursive), globs as their matches (sorted). Each file once, first mention kept.
    CaptureError (one line) for a path that names nothing."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found, seen = [], set()

    def add(path: str) -> None:
        identity = os.path.realpath(path)
        if identity not in seen:
            seen.add(identity)
            found.append(path)

    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            files = _directory_files(path)
            if not files:
                raise CaptureError(f"{path}: directory holds no files")
            for name in files:
                add(name)
        elif os.path.lexists(path):
            add(path)
        else:
            matches = sorted(glob.glob(path)) if glob.has_magic(path) else []
            if not matches:
                raise CaptureError(f"{path}: no such file or directory, and no file matches it")
            for match in matches:
                for name in (_directory_files(match) if os.path.isdir(match) else [match]):
                    add(name)
    if not found:
        raise CaptureError("no capture files given")
    return found


def _directory_files(path: str) -> list[str]:
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot list: {exc.strerror or exc}") from None
    return [entry.path for entry in entries if entry.is_file()]


def is_single_file(paths) -> bool:
    """One argument that names a file (not a directory or a pattern): read exactly as open_capture does."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if len(paths) != 1:
        return False
    try:
        return not stat.S_ISDIR(os.stat(paths[0]).st_mode)
    except OSError:
        return not glob.has_magic(os.fspath(paths[0]))    # missing: open_capture names it


def first_path(paths) -> str:
    """The file a set starts with in argument order (the one path itself when it names a file)."""
    if is_single_file(paths):
        return os.fspath(paths if isinstance(paths, (str, os.PathLike)) else list(paths)[0])
    return expand_paths(paths)[0]


def interfaces_match(a: Interface, b: Interface) -> bool:
    """mergecap's is_duplicate_idb on what lab reads: optional texts compare only when both are present."""
    return (a.linktype == b.linktype and a.tsresol == b.tsresol and a.snaplen == b.snaplen
            and all(x is None or y is None or x == y for x, y in ((a.name, b.name),
                                                                  (a.description, b.description))))


def merged_interfaces(lists: list[list[Interface]]) -> tuple[list[Interface], list[list[int]]]:
    """mergecap's IDB merge (-I all): (merged list, per file its local -> merged index)."""
    first = lists[0] if lists else []
    if len(lists) > 1 and all(len(other) == len(first) and all(map(interfaces_match, first, other))
                              for other in lists[1:]):
        return list(first), [list(range(len(first))) for _ in lists]
    merged, maps = [], []
    for interfaces in lists:
        maps.append(list(range(len(merged), len(merged) + len(interfaces))))
        merged.extend(interfaces)
    return merged, maps


@dataclass
class FileReport:
    """One file of a set: what was read from it, what was lost."""

    path: str
    format: str | None = None
    file_bytes: int = 0
    packets: int = 0
    bytes_read: int = 0
    first_ts_ns: int | None = None      # earliest and latest stamp in the file
    last_ts_ns: int | None = None
    non_monotonic: int = 0              # in the file's own order
    missing_ts: int = 0
    damage: list[Damage] = field(default_factory=list)
    error: str | None = None            # the file could not be opened: it was skipped

    @classmethod
    def unreadable(cls, path: str, error: str) -> "FileReport":
        """A file that could not be opened, so was skipped whole."""
        return cls(path, file_bytes=_size(path), error=error)

    def lost(self) -> tuple[int, int]:
        """(bytes, records) not read: a skipped file counts whole."""
        if self.error is not None:
            return self.file_bytes, 0
        return sum(d.bytes_skipped for d in self.damage), sum(d.records_skipped for d in self.damage)


def damage_warning(path: str, damage: list[Damage], packets: int) -> str:
    """One line naming a damaged file, what was skipped and what was kept."""
    nbytes, records = sum(d.bytes_skipped for d in damage), sum(d.records_skipped for d in damage)
    reasons = "; ".join(f"{d.reason} at byte {d.at_offset}" for d in damage)
    return (f"{path}: damaged: {nbytes} bytes, {records} records not read ({reasons}); "
            f"{packets} packets read from it kept")


def set_skipped_report(reports: list[FileReport]) -> dict | None:
    """The JSON `skipped` object of a set (None when nothing was lost): files skipped whole, and
    each damaged file's reasons (records.skipped_report's, with the file named)."""
    skipped = [r for r in reports if r.error is not None]
    damaged = [r for r in reports if r.error is None and r.damage]
    if not skipped and not damaged:
        return None
    return {
        "bytes": sum(r.lost()[0] for r in skipped + damaged),
        "records": sum(r.lost()[1] for r in damaged),
        "files_skipped": [{"file": r.path, "error": r.error, "bytes": r.file_bytes} for r in skipped],
        "reasons": [{"file": r.path, **reason} for r in damaged for reason in skipped_report(r.damage)["reasons"]],
    }


def file_bytes_of(paths) -> int | None:
    """Total size of the files `paths` names (for a progress bar), None if it cannot be known."""
    try:
        return sum(os.path.getsize(path) for path in expand_paths(paths))
    except (CaptureError, OSError):
        return None


def none_readable(errors: list[str]) -> CaptureError:
    """The one-line error when no file of a set can be opened."""
    if len(errors) == 1:
        return CaptureError(errors[0])
    return CaptureError(f"none of the {len(errors)} files is a readable capture: {errors[0]} "
                        f"(and {len(errors) - 1} more)")


def open_captures(paths) -> "CaptureSet":
    return CaptureSet(paths)


class _Member:
    """One readable file of a set, as the merge walks it."""

    def __init__(self, index: int, capture: Capture, report: FileReport):
        self.index = index                       # among the readable files, in argument order
        self.stamped_rank = 0                    # set by CaptureSet once the readable files are known
        self.capture = capture
        self.walk = None                         # the walk of batches(), once started
        self.report = report
        self.first_key: int | None = None        # the first packet's stamp (NO_TIMESTAMP if it has none)
        self.open_interfaces: list[Interface] = []
        self.map = np.zeros(0, np.uint16)        # local interface -> merged
        self.identity = True
        self.data: np.ndarray | None = None      # the file's mapping (every batch's data)

    def probe(self) -> None:
        """Read up to the first packet: its stamp, and the interfaces defined before it."""
        walk = self.capture.batches(1, release=False)
        first = next(walk, None)
        walk.close()
        self.first_key = None if first is None else int(first.ts_ns[0])
        self.open_interfaces = list(self.capture.interfaces)
        if first is None:       # nothing to merge: what the walk found is final
            self._finish()

    def rank(self, key: int) -> int:
        return self.index if key == NO_TIMESTAMP else self.stamped_rank

    def bound(self, key: int) -> tuple[int, int]:
        return key, self.rank(key)

    def start(self, max_packets: int) -> None:
        self.walk = self.capture.batches(max_packets, release=False)
        self.run_max = NO_TIMESTAMP
        self.held: PacketBatch | None = None
        self.held_keys = np.zeros(0, np.int64)
        self.held_start = 0
        self.frontier = self.first_key
        self.report.packets = 0
        self.report.first_ts_ns = self.report.last_ts_ns = None

    def read(self, merged: list[Interface]) -> bool:
        """The next batch into `held`; False when the file is done."""
        batch = next(self.walk, None)
        if batch is None:
            self._finish()
            return False
        ts = batch.ts_ns
        keys = np.maximum.accumulate(ts)       # NO_TIMESTAMP is int64's minimum: it never raises the key
        np.maximum(keys, self.run_max, out=keys)
        self.run_max = self.frontier = int(keys[-1])
        self._map_interfaces(batch, merged)
        self.held, self.held_keys, self.held_start, self.data = batch, keys, 0, batch.data
        stamps = ts[ts != NO_TIMESTAMP]
        if stamps.size:
            low, high = int(stamps.min()), int(stamps.max())
            report = self.report
            report.first_ts_ns = low if report.first_ts_ns is None else min(report.first_ts_ns, low)
            report.last_ts_ns = high if report.last_ts_ns is None else max(report.last_ts_ns, high)
        self.report.packets += len(batch)
        return True

    def _map_interfaces(self, batch: PacketBatch, merged: list[Interface]) -> None:
        interfaces = self.capture.interfaces
        if len(interfaces) > len(self.map):       # defined after the first packet: appended
            added = np.arange(len(merged), len(merged) + len(interfaces) - len(self.map), dtype=np.uint16)
            merged.extend(interfaces[len(self.map):])
            self.map = np.concatenate([self.map, added])
            self.identity = bool(np.array_equal(self.map, np.arange(len(self.map))))
        if not self.identity and len(batch):
            batch.interface = self.map[batch.interface]

    def upto(self, bound: tuple[int, int] | None) -> int:
        """How many held rows sort at or before `bound` (None: all of them)."""
        keys = self.held_keys[self.held_start:]
        if bound is None or not keys.size:
            return keys.size
        key, rank = bound
        return int(np.searchsorted(keys, key, "right" if self.rank(key) <= rank else "left"))

    def take(self, count: int) -> "_Piece":
        start, stop = self.held_start, self.held_start + count
        batch = self.held
        whole = batch if (start == 0 and stop == len(batch)) else None
        columns = {name: getattr(batch, name)[start:stop] for name in COLUMN_DTYPES}
        keys = self.held_keys[start:stop]
        self.held_start = stop
        return _Piece(self, columns, keys, whole)

    def _finish(self) -> None:
        capture, report = self.capture, self.report
        report.damage = list(capture.damage)
        report.non_monotonic = capture.non_monotonic
        report.missing_ts = capture.missing_ts
        report.bytes_read = capture.position


@dataclass
class _Piece:
    """Rows ready to go out, in merged order: one file's run, or several files' interleaved."""

    member: _Member | np.ndarray       # the file, or per row the member index into CaptureSet._members
    columns: dict[str, np.ndarray]
    keys: np.ndarray
    whole: PacketBatch | None = None   # the file's own batch, when the piece is all of it

    def __len__(self) -> int:
        return len(self.keys)

    def split(self, count: int) -> tuple["_Piece", "_Piece"]:
        def part(rows):
            member = self.member if isinstance(self.member, _Member) else self.member[rows]
            return _Piece(member, {n: c[rows] for n, c in self.columns.items()}, self.keys[rows])
        return part(slice(0, count)), part(slice(count, None))


class CaptureSet:
    """Capture files read as one, in mergecap's order (see the module docstring).

    One argument that names a file is read exactly as open_capture reads it (its
    errors raise). Otherwise the files are expanded (expand_paths); a file that
    cannot be opened is skipped with a warning, and CaptureError is raised only
    when none can. `warnings` holds one line per skipped or damaged file,
    `reports` one FileReport per file (complete once batches() has finished).
    """

    def __init__(self, paths):
        arguments = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        if not arguments:
            raise CaptureError("no capture files given")
        self.label = " ".join(arguments)
        self.single = is_single_file(arguments)
        self.warnings: list[str] = []
        self.packets = self.non_monotonic = self.missing_ts = 0
        self._release_points: dict[int, list[tuple[Capture, int]]] = {}
        if self.single:
            self._capture = open_capture(arguments[0])
            self.paths = [arguments[0]]
            self.reports = [FileReport(arguments[0], self._capture.format, self._capture.file_bytes)]
            self._members = []
            return
        self.paths = expand_paths(arguments)
        self.reports, self._members, errors = [], [], []
        try:
            for path in self.paths:
                report = FileReport(path)
                self.reports.append(report)
                try:
                    capture = open_capture(path)
                except CaptureError as exc:
                    self.reports[-1] = FileReport.unreadable(path, str(exc))
                    errors.append(str(exc))
                    self.warnings.append(f"{exc}; file skipped")
                    continue
                report.format, report.file_bytes = capture.format, capture.file_bytes
                member = _Member(len(self._members), capture, report)
                self._members.append(member)
                member.probe()
            if not self._members:
                raise none_readable(errors)
        except BaseException:
            self.close()
            raise
        for member in self._members:
            member.stamped_rank = len(self._members) - 1 - member.index   # equal stamps: the last file first
        self._merged, maps = merged_interfaces([m.open_interfaces for m in self._members])
        for member, local in zip(self._members, maps):
            member.map = np.array(local, np.uint16)
            member.identity = local == list(range(len(local)))
        for member in self._members:
            if member.first_key is None and member.capture.damage:
                self.warnings.append(damage_warning(member.report.path, member.capture.damage, 0))
        self._open_warnings = list(self.warnings)

    # --- what the set is --------------------------------------------------------

    @property
    def interfaces(self) -> list[Interface]:
        return self._capture.interfaces if self.single else self._merged

    @property
    def format(self) -> str:
        if self.single:
            return self._capture.format
        formats = {m.capture.format for m in self._members}
        return formats.pop() if len(formats) == 1 else "mixed"

    @property
    def file_bytes(self) -> int:
        return self._capture.file_bytes if self.single else sum(m.capture.file_bytes for m in self._members)

    @property
    def position(self) -> int:
        """Bytes walked so far over all files (for progress)."""
        if self.single:
            return self._capture.position
        return sum(m.capture.position for m in self._members if m.walk is not None or m.first_key is None)

    @property
    def damage(self) -> list[Damage]:
        if self.single:
            return self._capture.damage
        return [d for report in self.reports for d in report.damage]

    # --- reading ------------------------------------------------------------------

    def batches(self, max_packets: int = 1 << 20, release: bool = True) -> Iterator[PacketBatch]:
        """All packets in merged order, in batches of max_packets (the last may be shorter).

        release=False: the consumer calls release(batch) when done with each batch, so the
        files' mapped pages behind it can be dropped (as Capture.release_before).
        """
        if max_packets < 1:
            raise ValueError("max_packets must be >= 1")
        self.packets = self.non_monotonic = self.missing_ts = 0
        self._last_ts = None
        if not self.single:
            self.warnings = list(self._open_warnings)
        source = self._capture.batches(max_packets, release=False) if self.single else self._merge(max_packets)
        for batch in source:
            self._count(batch)
            if not self.single:
                self._release_points[id(batch)] = self._points
            yield batch
            if release:
                self.release(batch)

    def release(self, batch: PacketBatch) -> None:
        """Done with this batch: drop the files' mapped pages before it (they fault back in if read again)."""
        if self.single:
            if len(batch):
                self._capture.release_before(int(batch.offset[-1]))
            return
        for capture, offset in self._release_points.pop(id(batch), ()):
            capture.release_before(offset)

    def _count(self, batch: PacketBatch) -> None:
        """Packets, missing stamps and non-monotonic stamps in merged order (as the mergecap'd file has them)."""
        self.packets += len(batch)
        if self.single:
            self.non_monotonic, self.missing_ts = self._capture.non_monotonic, self._capture.missing_ts
            return
        stamped = batch.ts_ns != NO_TIMESTAMP
        self.missing_ts += int(len(batch) - np.count_nonzero(stamped))
        stamps = batch.ts_ns[stamped]
        if stamps.size:
            self.non_monotonic += int(np.count_nonzero(stamps[1:] < stamps[:-1]))
            if self._last_ts is not None and stamps[0] < self._last_ts:
                self.non_monotonic += 1
            self._last_ts = int(stamps[-1])

    def _merge(self, max_packets: int) -> Iterator[PacketBatch]:
        members = [m for m in self._members if m.first_key is not None]
        # Files not started yet, by the bound of their first packet: the earliest first.
        waiting = deque(sorted(members, key=lambda m: m.bound(m.first_key)))
        for member in members:
            member.walk = None
        reading: list[_Member] = []
        ready: deque[_Piece] = deque()
        ready_rows = 0
        while True:
            bounds = [(m.bound(m.frontier), m) for m in reading]
            if waiting:
                bounds.append((waiting[0].bound(waiting[0].first_key), waiting[0]))
            bound, owner = min(bounds, key=lambda b: b[0]) if bounds else (None, None)
            piece = self._final_rows(reading, bound)
            if piece is not None:
                ready.append(piece)
                ready_rows += len(piece)
            while ready_rows >= max_packets or (owner is None and ready_rows):
                batch = self._assemble(ready, min(max_packets, ready_rows))
                ready_rows -= len(batch)
                yield batch
            if owner is None:
                return
            if waiting and owner is waiting[0]:
                waiting.popleft()
                owner.start(max_packets)
                reading.append(owner)
            if not owner.read(self._merged):
                reading.remove(owner)
                if owner.report.damage:
                    self.warnings.append(damage_warning(owner.report.path, owner.report.damage,
                                                        owner.report.packets))

    def _final_rows(self, reading: list[_Member], bound) -> _Piece | None:
        """The held rows at or before `bound`, in merged order (None: nothing)."""
        pieces = []
        for member in reading:
            if member.held is not None:
                count = member.upto(bound)
                if count:
                    pieces.append(member.take(count))
        if len(pieces) <= 1:
            return pieces[0] if pieces else None
        if any(p.keys[0] == NO_TIMESTAMP for p in pieces):     # rows before a file's first stamp
            keys = np.concatenate([p.keys for p in pieces])
            ranks = np.concatenate([np.where(p.keys == NO_TIMESTAMP, p.member.index, p.member.stamped_rank)
                                    for p in pieces])
            order = np.lexsort((ranks, keys))       # stable: each file's rows keep their order
        else:   # equal keys: the file given last first, so a stable sort of the pieces in that order is enough
            pieces.sort(key=lambda p: p.member.stamped_rank)
            keys = np.concatenate([p.keys for p in pieces])
            order = np.argsort(keys, kind="stable")     # sorted runs: timsort merges them in linear time
        owners = np.concatenate([np.full(len(p), p.member.index, np.int32) for p in pieces])[order]
        columns = {name: np.concatenate([p.columns[name] for p in pieces])[order] for name in COLUMN_DTYPES}
        return _Piece(owners, columns, keys[order])

    def _assemble(self, ready: deque, count: int) -> PacketBatch:
        """The next `count` ready rows as one batch; notes in self._points what release() frees."""
        parts = []
        while count:
            piece = ready.popleft()
            if len(piece) > count:
                piece, rest = piece.split(count)
                ready.appendleft(rest)
            parts.append(piece)
            count -= len(piece)
        if len(parts) == 1 and parts[0].whole is not None:     # a file's own batch, as it was read
            batch = parts[0].whole
            self._points = [(parts[0].member.capture, int(batch.offset[-1]))]
            return batch
        columns = {name: np.concatenate([p.columns[name] for p in parts]) for name in COLUMN_DTYPES}
        if all(isinstance(p.member, _Member) for p in parts) and len({p.member for p in parts}) == 1:
            member = parts[0].member      # one file: its mapping is the data, nothing copied
            self._points = [(member.capture, int(columns["offset"][-1]))]
            return PacketBatch(data=member.data, **columns)
        owners = np.concatenate([np.full(len(p), p.member.index, np.int32) if isinstance(p.member, _Member)
                                 else p.member for p in parts])
        return self._copied(columns, owners)

    def _copied(self, columns: dict, owners: np.ndarray) -> PacketBatch:
        """Rows of several files: each file's byte span copied into one buffer, offsets re-based.
        A file's rows are in its own order, so its span runs from its first row to the end of its last."""
        offset, caplen = columns["offset"], columns["caplen"]
        change = np.flatnonzero(owners[1:] != owners[:-1]) + 1
        run_start = np.concatenate([[0], change])
        run_last = np.append(change, len(owners)) - 1
        run_owner = owners[run_start]
        present, first_run = np.unique(run_owner, return_index=True)
        last_run = len(run_owner) - 1 - np.unique(run_owner[::-1], return_index=True)[1]
        low = offset[run_start[first_run]]
        last_row = run_last[last_run]
        size = offset[last_row] + caplen[last_row] - low
        base = np.concatenate([[0], np.cumsum(size)[:-1]])
        buffer = np.empty(int(size.sum()), np.uint8)
        shift = np.zeros(len(self._members), np.int64)
        shift[present] = base - low
        points = []
        for index, start, length, at, last in zip(present.tolist(), low.tolist(), size.tolist(), base.tolist(),
                                                  offset[last_row].tolist()):
            member = self._members[index]
            buffer[at:at + length] = member.data[start:start + length]
            points.append((member.capture, last))
        columns["offset"] = offset + shift[owners]
        self._points = points
        return PacketBatch(data=buffer, **columns)

    # --- end ------------------------------------------------------------------------

    def close(self) -> None:
        if self.single:
            self._capture.close()
        for member in self._members:
            member.capture.close()

    def __enter__(self) -> "CaptureSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0

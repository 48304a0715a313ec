"""The persistence logger: one more consumer on every queue of a running engine.

It attaches by name to `<engine>.md`, `.orders`, `.accounts` and `.timing` and writes every
message, in order per queue, to a zstd-compressed log (format: docs/telemetry.md,
"Persistence log"). It only reads the shared rings, so a producer never waits for it; if a
producer laps it anyway, the log records the gap (queue, first missed seq, count) and the
logger says so on stderr.

    python -m engine.logger --engine NAME --out FILE [--config ENGINE.toml]

On its own it stops when the engine's queues go away (the engine exited) or on
SIGINT/SIGTERM, after draining until the heads stop moving. With `logger = "FILE"` in the
engine's [engine] table the runner starts it (LoggerProcess) with `--control`: the runner
then sends, one JSON object per line on the logger's stdin, the engine config and, at the
end, the final head of every queue; the logger drains up to those heads, writes its end
record and exits. It ignores SIGINT and SIGTERM then (a signal to the whole process group
is the engine's to act on); should the engine die instead, its end of the logger's stdin
closes, and the logger drains what is there, ends the log as incomplete and exits.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import zstandard

from engine import _native
from engine.clock import Calibration, calibrate
from engine.config import ConfigError, config_record, parse_config
from engine.messages import ACCOUNT_UPDATE, MARKET_UPDATE, ORDER_REQUEST, TIMING
from engine.protocol.layout import Field, Layout
from engine.queues import HEADER_BYTES, PREFIX, Queue, QueueError, fingerprint

FORMAT = "wirelab-log/1"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_LEVEL = 1                  # level 3 compresses these messages no better, at half the speed
ENGINE_QUEUES = (("md", MARKET_UPDATE), ("orders", ORDER_REQUEST), ("accounts", ACCOUNT_UPDATE),
                 ("timing", TIMING))
LAYOUTS = {layout.name: layout for _role, layout in ENGINE_QUEUES}

RECORD = Layout("LogRecord", 24, [
    Field("kind", 0, "u1", 'b"H" header, b"Q" queue, b"C" engine config, b"M" messages, b"G" gap, b"E" end'),
    Field("queue", 1, "u1", "M, G, Q: the queue's index (the order of the Q records); otherwise 0"),
    Field("count", 4, "<u4", "M: messages in the body; G: messages missed"),
    Field("seq", 8, "<u8", "M: sequence number of the first message; G: of the first one missed"),
    Field("body_bytes", 16, "<u8", "bytes of body after this header"),
])
RECORD_HEADER = RECORD.struct
HEADER, QUEUE, CONFIG, MESSAGES, GAP, END = (ord(c) for c in "HQCMGE")
JSON_KINDS = {HEADER: "header", QUEUE: "queue", CONFIG: "config", END: "end"}

# Seqlock reads of many slots at once with numpy need loads kept in program order: x86-64 does.
VECTOR_READS = platform.machine() in ("x86_64", "AMD64")
READ_LIMIT = 1 << 14            # messages per read of one queue
IDLE_SLEEP_S = 0.001            # when every queue is drained; a ring of 2^14 lasts > 10 ms at 1M msgs/s
QUIET_S = 0.05                  # stopping without known final heads: heads still for this long
FINAL_HEADS_TIMEOUT_S = 5.0     # a claimed slot that is never written must not hang the stop
ENGINE_CHECK_S = 0.1
READY_TIMEOUT_S = 30.0


class LogError(ValueError):
    """A log file that cannot be read: not a wirelab log, corrupt or truncated."""


class LoggerError(OSError):
    """The logger process could not start, or did not stop cleanly."""


# -- reading a ring ------------------------------------------------------------------------

class QueueReader:
    """Takes every ready message of a Queue in one vectorised pass over the shared ring.

    The seqlock protocol of Consumer.poll_bytes for many slots at once: a message counts only
    if its slot showed the expected version (2 x lap + 2) both before and after the copy.
    Versions, payloads, versions are three numpy passes; x86-64 keeps loads in program order,
    which is all a seqlock reader needs. Elsewhere it reads one slot at a time.
    """

    def __init__(self, queue: Queue, start: int):
        self.queue, self.seq, self.missed = queue, start, 0
        if VECTOR_READS:
            slot = np.dtype({"names": ["version", "payload"], "formats": ["<u8", (np.uint8, queue.payload_size)],
                             "offsets": [0, 8], "itemsize": queue.stride})
            slots = np.frombuffer(queue.buf, slot, count=queue.capacity, offset=HEADER_BYTES)
            self.versions, self.payloads = slots["version"], slots["payload"]

    def read(self, limit: int = READ_LIMIT):
        """("messages", first seq, uint8 array of payloads), ("gap", first missed seq, count), or None."""
        if not VECTOR_READS:
            return self._read_each(limit)
        queue = self.queue
        head = queue.head()
        if head == self.seq:
            return None
        if head - self.seq > queue.capacity:
            return self._recover()
        seqs = np.arange(self.seq, min(head, self.seq + limit), dtype=np.uint64)
        if not len(seqs):
            return None
        index = (seqs & np.uint64(queue.capacity - 1)).astype(np.intp)
        expected = seqs // np.uint64(queue.capacity) * np.uint64(2) + np.uint64(2)
        before = self.versions[index]
        payloads = self.payloads[index]
        after = self.versions[index]
        good = (before == expected) & (after == expected)
        n = len(seqs) if good.all() else int(np.argmin(good))
        if n == 0:
            # Lower: claimed but not written yet. Higher, or changed during the copy: sped past.
            return self._recover() if before[0] >= expected[0] else None
        first = self.seq
        self.seq += n
        return "messages", first, payloads[:n]

    def _recover(self):
        """Sped past: skip to the oldest message still in the ring, as Consumer does."""
        oldest = max(self.seq + 1, self.queue.head() - self.queue.capacity + 1)
        first, count = self.seq, oldest - self.seq
        self.seq = oldest
        self.missed += count
        return "gap", first, count

    def _read_each(self, limit: int):
        """The same, one slot at a time with the native seqlock read (its own barriers)."""
        queue, first, rows, got = self.queue, self.seq, [], None
        while len(rows) < limit:
            seq = first + len(rows)
            got = _native.seqlock_read(queue.slot_address(seq), 2 * (seq // queue.capacity) + 2, queue.payload_size)
            if type(got) is not bytes:
                break
            rows.append(got)
        if rows:
            self.seq += len(rows)
            return "messages", first, np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), -1)
        return self._recover() if got == _native.READ_SPED_PAST else None

    def close(self) -> None:
        """Drop the views into the ring, so the queue can unmap it."""
        self.versions = self.payloads = None


# -- the log file ---------------------------------------------------------------------------

class LogWriter:
    """Records into one zstd stream (content checksum on). The file is created owner-only."""

    def __init__(self, path: str):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        self.path = path
        self.file = os.fdopen(fd, "wb")
        self.stream = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).stream_writer(
            self.file, closefd=False)
        self.raw_bytes = 0

    def record(self, kind: int, body: bytes = b"", queue: int = 0, count: int = 0, seq: int = 0) -> None:
        self.stream.write(RECORD_HEADER.pack(kind, queue, count, seq, len(body)))
        self.stream.write(body)
        self.raw_bytes += RECORD.size + len(body)

    def json(self, kind: int, value: dict, queue: int = 0) -> None:
        self.record(kind, json.dumps(value, sort_keys=True).encode(), queue)

    def messages(self, queue: int, first_seq: int, payloads: np.ndarray) -> None:
        """A batch of consecutive messages of one queue: (n, payload size) uint8."""
        self.record(MESSAGES, np.ascontiguousarray(payloads).tobytes(), queue, len(payloads), first_seq)

    def gap(self, queue: int, first_seq: int, count: int) -> None:
        self.record(GAP, b"", queue, count, first_seq)

    def close(self) -> int:
        """Finish the zstd frame and the file; returns the file's size in bytes."""
        self.stream.close()                       # ends the zstd frame
        self.file.close()
        return os.path.getsize(self.path)


@dataclass
class LoggedQueue:
    index: int
    role: str                  # md, orders, accounts, timing
    name: str                  # the queue's shared-memory name without the prefix
    layout: Layout
    capacity: int
    start_seq: int             # the first sequence number the logger looked for
    messages: np.ndarray       # structured array of the layout's dtype, in sequence order
    seqs: np.ndarray           # uint64: each message's sequence number
    gaps: list[tuple[int, int]] = field(default_factory=list)    # (first missed seq, count)

    @property
    def missed(self) -> int:
        return sum(count for _seq, count in self.gaps)


@dataclass
class Log:
    path: str
    header: dict
    config: dict | None
    queues: dict[str, LoggedQueue]     # by role
    end: dict
    raw_bytes: int
    file_bytes: int


def read_log(path: str) -> Log:
    """Read and check a whole log: every length, sequence and layout is verified."""
    with open(path, "rb") as f:
        compressed = f.read()
    if compressed[:4] != ZSTD_MAGIC:
        raise LogError(f"{path}: not a wirelab log (no zstd frame at the start)")
    parts, rest = [], compressed
    try:
        while rest:
            frame = zstandard.ZstdDecompressor().decompressobj()
            parts.append(frame.decompress(rest))
            if not frame.eof:
                raise LogError(f"{path}: truncated: the last zstd frame does not end")
            rest = frame.unused_data
    except zstandard.ZstdError as exc:
        raise LogError(f"{path}: corrupt zstd data ({exc})") from None
    return _parse(path, b"".join(parts), len(compressed))


def _parse(path: str, data: bytes, file_bytes: int) -> Log:
    at, defined, view = 0, [], memoryview(data)
    json_records: dict[str, dict] = {}
    batches: dict[int, list] = {}
    while at < len(data):
        if len(data) - at < RECORD.size:
            raise LogError(f"{path}: truncated: {len(data) - at} bytes left where a record header needs {RECORD.size}")
        kind, queue, count, seq, body_bytes = RECORD_HEADER.unpack_from(data, at)
        body_at = at + RECORD.size
        if body_bytes > len(data) - body_at:
            raise LogError(f"{path}: truncated: a record at byte {at} needs {body_bytes} bytes, "
                           f"{len(data) - body_at} left")
        body = view[body_at:body_at + body_bytes]
        where = f"{path}: record at byte {at}"
        if at == 0 and kind != HEADER:
            raise LogError(f"{path}: not a wirelab log (it does not start with a header record)")
        if "end" in json_records:
            raise LogError(f"{where}: data after the end record")
        if kind in JSON_KINDS:
            value = _json_body(where, body)
            if kind == QUEUE:
                defined.append(_queue_definition(where, queue, len(defined), value))
                if [d["role"] for d in defined].count(defined[-1]["role"]) > 1:
                    raise LogError(f"{where}: a second {defined[-1]['role']} queue")
                batches[queue] = []
            elif JSON_KINDS[kind] in json_records:
                raise LogError(f"{where}: a second {JSON_KINDS[kind]} record")
            else:
                json_records[JSON_KINDS[kind]] = value
            if kind == HEADER and value.get("format") != FORMAT:
                raise LogError(f"{path}: format {value.get('format')!r}, expected {FORMAT!r}")
        elif kind in (MESSAGES, GAP):
            if queue >= len(defined):
                raise LogError(f"{where}: queue {queue} was never defined")
            entry = defined[queue]
            if seq != entry["next"]:
                raise LogError(f"{where}: {entry['name']} continues at seq {seq}, expected {entry['next']}")
            if kind == MESSAGES:
                if count == 0 or body_bytes != count * entry["layout"].size:
                    raise LogError(f"{where}: {count} {entry['layout'].name} messages cannot be {body_bytes} bytes")
                batches[queue].append((seq, body))
            elif body_bytes or count == 0:
                raise LogError(f"{where}: a gap record must count at least one message and have no body")
            else:
                entry["gaps"].append((seq, count))
            entry["next"] = seq + count
        else:
            raise LogError(f"{where}: unknown record kind {kind}")
        at = body_at + body_bytes
    if "end" not in json_records:
        raise LogError(f"{path}: truncated: no end record (the logger did not finish)")
    queues = {}
    for entry in defined:
        layout = entry["layout"]
        parts = batches[entry["index"]]
        body = b"".join(b for _seq, b in parts)
        seqs = np.concatenate([np.arange(s, s + len(b) // layout.size, dtype=np.uint64) for s, b in parts]) \
            if parts else np.zeros(0, np.uint64)
        queues[entry["role"]] = LoggedQueue(entry["index"], entry["role"], entry["name"], layout, entry["capacity"],
                                            entry["start_seq"], np.frombuffer(body, layout.dtype), seqs,
                                            entry["gaps"])
    return Log(path, json_records["header"], json_records.get("config"), queues, json_records["end"],
               len(data), file_bytes)


def _json_body(where: str, body: memoryview) -> dict:
    try:
        value = json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LogError(f"{where}: its JSON body does not parse") from None
    if not isinstance(value, dict):
        raise LogError(f"{where}: its JSON body is not an object")
    return value


def _queue_definition(where: str, index: int, expected_index: int, value: dict) -> dict:
    if index != expected_index:
        raise LogError(f"{where}: queue index {index}, expected {expected_index}")
    layout = LAYOUTS.get(value.get("layout"))
    if layout is None:
        raise LogError(f"{where}: unknown message layout {value.get('layout')!r}")
    if value.get("fingerprint") != fingerprint(layout.dtype) or value.get("payload_size") != layout.size:
        raise LogError(f"{where}: {layout.name} was logged with a different layout than this engine's")
    try:
        start, capacity, name, role = (int(value["start_seq"]), int(value["capacity"]), str(value["name"]),
                                       str(value["role"]))
    except (KeyError, TypeError, ValueError):
        raise LogError(f"{where}: a queue record needs name, role, capacity and start_seq") from None
    return {"index": index, "name": name, "role": role, "layout": layout, "capacity": capacity,
            "start_seq": start, "next": start, "gaps": []}


# -- the logger -----------------------------------------------------------------------------

class Logger:
    """Attaches to an engine's queues by name and logs them until told to stop."""

    def __init__(self, engine: str, out: str):
        self.engine = engine
        self.queues: list[tuple[str, Queue, QueueReader]] = []
        try:
            for role, layout in ENGINE_QUEUES:
                queue = Queue.attach(f"{engine}.{role}", layout.dtype)
                # From the very first message, unless the ring has lapped already (a late attach).
                head = queue.head()
                start = 0 if head <= queue.capacity else head - queue.capacity // 2
                self.queues.append((role, queue, QueueReader(queue, start)))
            self.writer = writer = LogWriter(out)             # only once there is an engine to log
        except (QueueError, OSError):
            self.close()
            raise
        writer.json(HEADER, {"format": FORMAT, "engine": engine, "created_ns": time.time_ns(),
                             "logger_pid": os.getpid()})
        for index, (role, queue, reader) in enumerate(self.queues):
            layout = dict(ENGINE_QUEUES)[role]
            writer.json(QUEUE, {"name": queue.name, "role": role, "layout": layout.name,
                                "descr": layout.dtype.descr, "fingerprint": fingerprint(layout.dtype),
                                "payload_size": layout.size, "capacity": queue.capacity,
                                "start_seq": reader.seq}, queue=index)
        self.logged = {role: 0 for role, _q, _r in self.queues}
        self.started = time.monotonic()

    def drain(self) -> int:
        """One pass over every queue; returns how many messages it logged."""
        total = 0
        for index, (role, queue, reader) in enumerate(self.queues):
            while (got := reader.read()) is not None:
                kind, first, data = got
                if kind == "gap":
                    self.writer.gap(index, first, data)
                    print(f"logger: SPED PAST on {queue.name}: {data} messages lost (seq {first}..{first + data - 1})",
                          file=sys.stderr, flush=True)
                    continue
                self.writer.messages(index, first, data)
                self.logged[role] += len(data)
                total += len(data)
                if len(data) < READ_LIMIT:
                    break
        return total

    def heads(self) -> dict[str, int]:
        return {role: queue.head() for role, queue, _r in self.queues}

    def reached(self, heads: dict[str, int]) -> bool:
        return all(reader.seq >= heads.get(role, 0) for role, _q, reader in self.queues)

    def finish(self, complete: bool, reason: str, calibration: Calibration | None) -> dict:
        """Write the end record and close the file; returns the run's summary."""
        calibration = calibration or calibrate(duration_s=0.05, samples=100)
        missed = {role: reader.missed for role, _q, reader in self.queues}
        end = {"complete": complete, "reason": reason, "heads": self.heads(), "logged": self.logged,
               "missed": missed, "calibration": calibration.to_dict(), "ended_ns": time.time_ns()}
        self.writer.json(END, end)
        file_bytes = self.writer.close()
        seconds = time.monotonic() - self.started
        return {"out": self.writer.path, "complete": complete, "reason": reason, "messages": self.logged,
                "missed": missed, "raw_bytes": self.writer.raw_bytes, "file_bytes": file_bytes,
                "compression_ratio": round(self.writer.raw_bytes / max(file_bytes, 1), 2),
                "seconds": round(seconds, 3)}

    def close(self) -> None:
        for _role, queue, reader in self.queues:
            reader.close()
            queue.close()
        self.queues = []


class _Control:
    """What tells the logger to stop: the runner's control lines, a signal, or the engine going away."""

    def __init__(self, engine: str, control: bool):
        self.control = sys.stdin if control else None
        self.pending = b""
        self.final_heads: dict[str, int] | None = None
        self.calibration: Calibration | None = None
        self.stop_reason: str | None = None
        self.configs: list[dict] = []
        self.segment = f"/dev/shm/{PREFIX}{engine}.md"
        self.next_check = 0.0
        if control:                                               # the engine decides when to stop
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
        else:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: setattr(self, "stop_reason", "stopped by a signal"))

    def check(self) -> None:
        if self.control is not None:
            self._read_lines()
        elif self.stop_reason is None and time.monotonic() >= self.next_check:
            self.next_check = time.monotonic() + ENGINE_CHECK_S
            if not os.path.exists(self.segment):
                self.stop_reason = "the engine exited"

    def _read_lines(self) -> None:
        fd = self.control.fileno()
        while self.final_heads is None and self.stop_reason is None and select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                self.stop_reason = "the engine closed the control channel without a stop"
                return
            self.pending += chunk
            *lines, self.pending = self.pending.split(b"\n")
            for line in lines:
                message = json.loads(line)
                if "config" in message:
                    self.configs.append(message["config"])
                if "stop" in message:
                    self.final_heads = {k: int(v) for k, v in message["stop"]["heads"].items()}
                    if message["stop"].get("calibration"):
                        self.calibration = Calibration.from_dict(message["stop"]["calibration"])


def run_logger(engine: str, out: str, control: bool = False, config: dict | None = None) -> dict:
    """Log the engine's queues until stopped; returns the summary. Raises QueueError, OSError."""
    logger = Logger(engine, out)
    writer = logger.writer
    try:
        stop = _Control(engine, control)
        if config is not None:
            writer.json(CONFIG, config)
        if control:
            print("ready", flush=True)
        else:
            print(f"logger: logging engine {engine!r} to {out} until it exits (or SIGINT)", file=sys.stderr, flush=True)
        quiet_since = final_since = None
        heads = logger.heads()
        while True:
            moved = logger.drain()
            stop.check()
            for sent in stop.configs:
                writer.json(CONFIG, sent)
            stop.configs.clear()
            now = time.monotonic()
            if stop.final_heads is not None:
                if logger.reached(stop.final_heads):
                    return logger.finish(True, "the engine stopped", stop.calibration)
                final_since = final_since or now
                if now - final_since > FINAL_HEADS_TIMEOUT_S:
                    return logger.finish(False, "the final heads were never written", stop.calibration)
            elif stop.stop_reason is not None:
                # No final heads: drain until the heads stand still.
                current = logger.heads()
                if moved or current != heads or quiet_since is None:
                    heads, quiet_since = current, now
                elif now - quiet_since >= QUIET_S:
                    return logger.finish(stop.stop_reason == "the engine exited", stop.stop_reason, None)
            if not moved:
                time.sleep(IDLE_SLEEP_S)
    finally:
        logger.close()


class LoggerProcess:
    """The engine runner's logger (`logger = "FILE"` in [engine]): a child process, controlled
    over its stdin and answering on its stdout; its stderr is the engine's (gaps are loud)."""

    def __init__(self, engine: str, out: str, config: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "engine.logger", "--engine", engine, "--out", out,
                                      "--control"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._send({"config": config})
        answer = self._line(READY_TIMEOUT_S)
        if answer != "ready":
            self._kill()
            raise LoggerError(_reason(answer) or "the logger process did not start")

    def stop(self, heads: dict[str, int], calibration: Calibration | None) -> dict:
        """Tell the logger the final heads; wait until it has logged up to them and exited."""
        try:
            self._send({"stop": {"heads": heads, "calibration": calibration and calibration.to_dict()}})
            self.proc.stdin.close()
            answer = self._line(FINAL_HEADS_TIMEOUT_S + READY_TIMEOUT_S)
            self.proc.wait(timeout=READY_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            answer = None
        if self.proc.returncode != 0 or answer is None:
            self._kill()
            raise LoggerError(_reason(answer) or "the logger process did not finish its log")
        summary = json.loads(answer)
        summary["pid"] = self.proc.pid
        return summary

    def _send(self, message: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            pass                                   # it has exited; what it said comes next

    def _line(self, timeout: float) -> str | None:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        line = self.proc.stdout.readline().decode(errors="replace").strip()
        return line or None

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _reason(answer: str | None) -> str | None:
    """The error a logger reported on its stdout, if that is what it said."""
    try:
        return json.loads(answer)["error"]
    except (TypeError, ValueError, KeyError):
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.logger",
                                     description="Log every queue of a running engine to a zstd-compressed file.")
    parser.add_argument("--engine", required=True, metavar="NAME", help="the engine's name ([engine] name)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the log file to write (owner-only)")
    parser.add_argument("--config", metavar="TOML", help="the engine's config, recorded so the log can be replayed")
    parser.add_argument("--control", action="store_true",
                        help="read control lines on stdin (how the engine runner drives its logger)")
    args = parser.parse_args(argv)
    try:
        config = None
        if args.config:
            try:
                with open(args.config, "rb") as f:
                    config = config_record(parse_config(f.read().decode("utf-8")))
            except (ConfigError, UnicodeDecodeError) as exc:
                raise LoggerError(f"{args.config}: {exc}") from None
        summary = run_logger(args.engine, args.out, args.control, config)
    except (OSError, QueueError) as exc:
        message = f"cannot log engine {args.engine!r}: {exc}"
        if args.control:
            print(json.dumps({"error": message}), flush=True)
        else:
            print(f"logger: error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

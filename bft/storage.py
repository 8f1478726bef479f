"""Stable storage for a replica: a write-ahead log of records plus checkpoint snapshots.

Records are opaque bytes made by the replica (`Persist` effects); storage never
looks inside them. Two implementations share one contract, `Storage`:

* `MemoryStorage`: lists in memory, for tests and the simulator (which keeps
  the object across a simulated crash and can call `crash()` to lose what was
  not synced).
* `WalStorage`: files in one directory, for the runtime.

The contract
------------
* `append(record)` adds a record at the end of the log. It is not durable yet.
  A record larger than `max_record_bytes` raises `ValueError` (a local bug:
  the replica bounds what it persists).
* `sync()` makes every record appended so far durable. The runtime calls it
  once per batch of effects, before sending anything those records describe.
  A crash before `sync()` may lose a *suffix* of the unsynced records, never a
  record in the middle and never a synced one (with `fsync="always"`).
* `records()` returns the records appended since the last snapshot (or since
  the storage was first created), in append order, synced or not. After a
  restart it returns what survived: a prefix of what was appended that holds
  at least every synced record.
* `write_snapshot(seq, data, carry_over=())` durably stores the checkpoint
  snapshot `(seq, data)` and then drops every record appended before the call,
  synced or not. When it returns, `load_snapshot() == (seq, data)` and
  `records() == list(carry_over)`, all durable: records appended after it come
  after those. It is atomic: a crash at any point leaves either the old state
  (old snapshot, old records) or the new one, never a mix. The replica decides
  what survives a snapshot: whatever it still needs (current view, votes it
  signed above `seq`, ...) must be inside `data` or passed as `carry_over`.
  Re-appending such records *after* the call also works but leaves a window,
  until the next `sync()`, in which a crash loses them. `seq` may not go below
  the current snapshot's seq (`ValueError`).
* `load_snapshot()` returns the latest `(seq, data)`, or None.
* `close()` makes pending records durable, like `sync()`, and releases files.
* `statistics()` returns counters (a dict of plain values).

The write-ahead log on disk
---------------------------
The directory holds at most one snapshot file `snapshot` and one live WAL
segment `wal-<index>.log` (between steps of `write_snapshot`, or after a crash
there, also a stale one and `*.tmp` files, which opening cleans up).

* A segment starts with a header: magic `BFTW`, version, segment index,
  CRC32C of the header. Then records, each `length (u32 LE) | crc (u32 LE) |
  payload`, where `crc` is the CRC32C of the length bytes and the payload.
* The snapshot file is: magic `BFTS`, version, seq, the index of the segment
  that holds the records after it, data length, data, CRC32C of all before.
  It is written to `snapshot.tmp`, fsynced, renamed over `snapshot`, and the
  directory fsynced: the rename is the commit point.
* `write_snapshot` (steps named as in `SNAPSHOT_STEPS`, see `crash_hook`):
  1. write segment `index + 1` holding the `carry_over` records (temp file,
     fsync, rename, fsync the directory): "segment_written";
  2. write `snapshot.tmp` naming segment `index + 1`: "snapshot_temp_written";
  3. rename it over `snapshot`, fsync the directory: "snapshot_committed";
  4. delete the old segment, fsync the directory: "old_segment_deleted".
  On open, the live segment is the one the snapshot names (segment 0 if there
  is no snapshot); any other segment is either uncommitted (crash before 3:
  its index is higher) or compacted (crash before 4: lower) and is deleted,
  as are `*.tmp` files. So the log never grows past one checkpoint interval.

Damage found on open
--------------------
Opening scans the live segment. A torn or garbled tail (a partial record
header, a length above `max_record_bytes`, a length running past the end of
the file, a bad checksum) is detected, the segment is truncated just before
the first bad record, and the loss is reported in `statistics()["recovered"]`
(`reason`, `records_kept`, `bytes_truncated`, `offset`): it is never replayed
and never silently dropped. Damage in the middle is handled the same way:
everything from the first bad record on is dropped, even records that look
intact after it. A bad segment header or a missing segment drops the whole
segment; a corrupt snapshot drops the snapshot (kept aside as
`snapshot.corrupt`) and the segments, since records only mean something on
top of the snapshot before them.

Why dropping everything from the first bad record on is safe here:

* A torn tail after a crash can only hold records that were never synced:
  `sync()` returns only after fsync, and the runtime syncs before it sends
  what the records describe. No peer has seen those messages, so forgetting
  them is the same as having crashed a moment earlier.
* Damage before the tail (a flipped bit on the medium, a lost write) breaks
  the stable-storage assumption of the system model. Replaying the records
  after a hole could rebuild a state the replica never had, so the log keeps
  only its longest intact prefix and never skips. The replica restarts from
  that prefix like a replica that fell behind and catches up through state
  transfer: the latest stable checkpoint's state, proven by 2f+1 signed
  CHECKPOINTs, and the log after it from its peers. What it cannot regain from
  peers is the memory of votes it signed in the lost part; that is why the
  loss is reported in `recovered`, for the runtime to log loudly and, if it
  wants to be strict, to keep the replica from voting until it is past it.

fsync policy: `"always"` fsyncs the segment in `sync()` and `close()`, and
every file and directory change made by `write_snapshot` and by recovery.
`"never"` skips every fsync: records still reach the operating system at
`sync()`, so a process crash loses nothing synced, but a power loss or
kernel crash can lose or tear anything, acknowledged or not. Unsafe for real
deployments; meant for benchmarks.

One `WalStorage` per directory at a time (not enforced).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Self, runtime_checkable

import crc32c

from bft.errors import BftError

MAX_RECORD_BYTES = 16 * 1024 * 1024
"""Default bound on one record's payload."""

SNAPSHOT_STEPS = (
    "segment_written",
    "snapshot_temp_written",
    "snapshot_committed",
    "old_segment_deleted",
)
"""The points of `WalStorage.write_snapshot` at which `crash_hook` is called, in order."""

_VERSION = 1
_SEGMENT_MAGIC = b"BFTW"
_SNAPSHOT_MAGIC = b"BFTS"
_SEGMENT_HEADER = struct.Struct("<4sHHQ")  # magic, version, reserved, segment index
_SNAPSHOT_HEADER = struct.Struct("<4sHHQQQ")  # magic, version, reserved, seq, segment, length
_U32 = struct.Struct("<I")
_RECORD_HEADER = struct.Struct("<II")  # payload length, crc32c(length bytes + payload)
_SEGMENT_HEADER_BYTES = _SEGMENT_HEADER.size + _U32.size
_MAX_U64 = 2**64 - 1
_FLUSH_THRESHOLD_BYTES = 1 << 20  # write pending records to the OS past this much
_SNAPSHOT_NAME = "snapshot"
_CORRUPT_SNAPSHOT_NAME = "snapshot.corrupt"
_TEMP_SUFFIX = ".tmp"


#: Damage on open that only a crash during a write leaves: the record was never synced, so
#: nothing it described was ever sent (see "Why dropping everything ... is safe here").
TORN_TAIL_REASONS = frozenset({"torn record header", "torn record"})


def votes_may_be_lost(recovered: dict[str, Any] | None) -> bool:
    """Whether what opening dropped (`WalStorage.recovered`) may hold records of messages the
    replica signed and sent: any damage but a torn tail (a bad checksum, a bad segment
    header, a missing segment, a corrupt snapshot). The replica must then not vote where it
    may have voted before (bft.replica.Replica(votes_lost=True))."""
    return recovered is not None and recovered.get("reason") not in TORN_TAIL_REASONS


class StorageCorrupted(BftError):
    """Stored data that was intact when the storage was opened no longer is.

    Damage present at open is repaired and reported (see the module docstring);
    this is raised only when the files change under an open storage. Restart:
    opening again repairs what it can.
    """


@runtime_checkable
class Storage(Protocol):
    """Stable storage of one replica: records since the last snapshot, and the snapshot.

    The full contract is in the module docstring.
    """

    def append(self, record: bytes) -> None:
        """Add `record` at the end of the log (durable only after `sync()`)."""
        ...

    def sync(self) -> None:
        """Make every record appended so far durable."""
        ...

    def records(self) -> list[bytes]:
        """The records appended since the last snapshot, in order."""
        ...

    def write_snapshot(self, seq: int, data: bytes, *, carry_over: Sequence[bytes] = ()) -> None:
        """Atomically store snapshot `(seq, data)` and replace all records by `carry_over`."""
        ...

    def load_snapshot(self) -> tuple[int, bytes] | None:
        """The latest snapshot `(seq, data)`, or None."""
        ...

    def close(self) -> None:
        """Make pending records durable and release resources."""
        ...

    def statistics(self) -> dict[str, Any]:
        """Counters and sizes, as plain values."""
        ...


def _checked_record(record: bytes, max_record_bytes: int) -> bytes:
    """Return `record` as bytes; TypeError if it is not bytes-like, ValueError if too large."""
    if not isinstance(record, (bytes, bytearray, memoryview)):
        raise TypeError(f"a record must be bytes, not {type(record).__name__}")
    record = bytes(record)
    if len(record) > max_record_bytes:
        raise ValueError(
            f"record of {len(record)} bytes exceeds max_record_bytes={max_record_bytes}"
        )
    return record


def _checked_snapshot(seq: int, data: bytes, current_seq: int | None) -> bytes:
    """Validate `write_snapshot` arguments; return `data` as bytes."""
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= _MAX_U64:
        raise ValueError(f"snapshot seq must be an integer in [0, 2**64), not {seq!r}")
    if current_seq is not None and seq < current_seq:
        raise ValueError(f"snapshot seq {seq} is below the current snapshot's seq {current_seq}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"snapshot data must be bytes, not {type(data).__name__}")
    return bytes(data)


class MemoryStorage:
    """`Storage` in memory, with the crash behaviour of `WalStorage`.

    Appended records are pending until `sync()`; `crash()` forgets pending
    records, the worst a process crash may do to a `WalStorage`. Snapshots are
    durable at once. The object stays usable after `close()`, so a simulator
    can hand it to the replica it restarts.
    """

    def __init__(self, *, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        if max_record_bytes <= 0:
            raise ValueError("max_record_bytes must be positive")
        self._max_record_bytes = max_record_bytes
        self._durable: list[bytes] = []
        self._pending: list[bytes] = []
        self._snapshot: tuple[int, bytes] | None = None
        self._counters = {
            "appends": 0,
            "appended_bytes": 0,
            "rejected_appends": 0,
            "syncs": 0,
            "snapshots": 0,
            "crashes": 0,
            "lost_records": 0,
        }

    def append(self, record: bytes) -> None:
        """Add `record` at the end of the log, pending until `sync()`."""
        try:
            record = _checked_record(record, self._max_record_bytes)
        except (TypeError, ValueError):
            self._counters["rejected_appends"] += 1
            raise
        self._pending.append(record)
        self._counters["appends"] += 1
        self._counters["appended_bytes"] += len(record)

    def sync(self) -> None:
        """Make every pending record durable (it survives `crash()`)."""
        self._durable.extend(self._pending)
        self._pending.clear()
        self._counters["syncs"] += 1

    def records(self) -> list[bytes]:
        """The records appended since the last snapshot, durable ones then pending ones."""
        return self._durable + self._pending

    def write_snapshot(self, seq: int, data: bytes, *, carry_over: Sequence[bytes] = ()) -> None:
        """Store `(seq, data)` durably; the records become exactly `carry_over`, durable."""
        data = _checked_snapshot(seq, data, self._snapshot[0] if self._snapshot else None)
        carried = [_checked_record(record, self._max_record_bytes) for record in carry_over]
        self._snapshot = (seq, data)
        self._durable = carried
        self._pending = []
        self._counters["snapshots"] += 1

    def load_snapshot(self) -> tuple[int, bytes] | None:
        """The latest snapshot, or None."""
        return self._snapshot

    def close(self) -> None:
        """Make pending records durable. The storage stays usable."""
        self._durable.extend(self._pending)
        self._pending.clear()

    def crash(self) -> int:
        """Simulate a process crash: forget the records not yet synced; return how many."""
        lost = len(self._pending)
        self._pending.clear()
        self._counters["crashes"] += 1
        self._counters["lost_records"] += lost
        return lost

    def statistics(self) -> dict[str, Any]:
        """Counters, plus `records`, `pending_records` and `snapshot_seq` (None if none)."""
        return {
            **self._counters,
            "records": len(self._durable) + len(self._pending),
            "pending_records": len(self._pending),
            "snapshot_seq": self._snapshot[0] if self._snapshot else None,
        }


class _Damaged(Exception):
    """Internal: a stored structure failed its checks (the message is the reason)."""


def _record_crc(length_bytes: bytes, payload: bytes) -> int:
    return crc32c.crc32c(payload, crc32c.crc32c(length_bytes))


def _encode_record(payload: bytes) -> bytes:
    length_bytes = _U32.pack(len(payload))
    return length_bytes + _U32.pack(_record_crc(length_bytes, payload)) + payload


def _scan_records(
    buf: bytes, start: int, max_record_bytes: int
) -> tuple[list[bytes], int, str | None]:
    """Parse records from `buf[start:]`.

    Returns the intact records, the offset just after the last of them, and
    None if the whole buffer parsed, else why parsing stopped there.
    """
    records: list[bytes] = []
    offset = start
    end = len(buf)
    while offset < end:
        if end - offset < _RECORD_HEADER.size:
            return records, offset, "torn record header"
        length, crc = _RECORD_HEADER.unpack_from(buf, offset)
        if length > max_record_bytes:
            return records, offset, "impossible record length"
        body = offset + _RECORD_HEADER.size
        if body + length > end:
            return records, offset, "torn record"
        payload = buf[body : body + length]
        if _record_crc(buf[offset : offset + _U32.size], payload) != crc:
            return records, offset, "bad record checksum"
        records.append(payload)
        offset = body + length
    return records, offset, None


def _segment_header(index: int) -> bytes:
    header = _SEGMENT_HEADER.pack(_SEGMENT_MAGIC, _VERSION, 0, index)
    return header + _U32.pack(crc32c.crc32c(header))


def _check_segment_header(buf: bytes, index: int) -> None:
    """Raise `_Damaged` unless `buf` starts with a valid header for segment `index`."""
    if len(buf) < _SEGMENT_HEADER_BYTES:
        raise _Damaged("torn segment header")
    header = buf[: _SEGMENT_HEADER.size]
    (crc,) = _U32.unpack_from(buf, _SEGMENT_HEADER.size)
    if crc32c.crc32c(header) != crc:
        raise _Damaged("bad segment header checksum")
    magic, version, _reserved, stored_index = _SEGMENT_HEADER.unpack(header)
    if magic != _SEGMENT_MAGIC or version != _VERSION:
        raise _Damaged("unknown segment format")
    if stored_index != index:
        raise _Damaged("segment index does not match its file name")


def _snapshot_pieces(seq: int, segment: int, data: bytes) -> tuple[bytes, bytes, bytes]:
    """The snapshot file's bytes in three pieces (header, data, crc): the data is not copied."""
    header = _SNAPSHOT_HEADER.pack(_SNAPSHOT_MAGIC, _VERSION, 0, seq, segment, len(data))
    return header, data, _U32.pack(crc32c.crc32c(data, crc32c.crc32c(header)))


def _record_pieces(payload: bytes) -> tuple[bytes, bytes]:
    """`_encode_record(payload)` in two pieces (header, payload): the payload is not copied."""
    length_bytes = _U32.pack(len(payload))
    return length_bytes + _U32.pack(_record_crc(length_bytes, payload)), payload


def _decode_snapshot(buf: bytes) -> tuple[int, int, bytes]:
    """Return `(seq, segment, data)` from a snapshot file's bytes; `_Damaged` if invalid."""
    if len(buf) < _SNAPSHOT_HEADER.size + _U32.size:
        raise _Damaged("truncated snapshot")
    magic, version, _reserved, seq, segment, length = _SNAPSHOT_HEADER.unpack_from(buf, 0)
    if magic != _SNAPSHOT_MAGIC or version != _VERSION:
        raise _Damaged("unknown snapshot format")
    if _SNAPSHOT_HEADER.size + length + _U32.size != len(buf):
        raise _Damaged("snapshot length does not match its file size")
    end = _SNAPSHOT_HEADER.size + length
    (crc,) = _U32.unpack_from(buf, end)
    if crc32c.crc32c(buf[:end]) != crc:
        raise _Damaged("bad snapshot checksum")
    return seq, segment, buf[_SNAPSHOT_HEADER.size : end]


def _segment_name(index: int) -> str:
    return f"wal-{index:020d}.log"


def _segment_index(name: str) -> int | None:
    """The index in a segment file name, or None if `name` is not one."""
    if name.startswith("wal-") and name.endswith(".log"):
        digits = name[len("wal-") : -len(".log")]
        if digits.isdigit():
            return int(digits)
    return None


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


_PIECE_BUFFER_BYTES = 64 * 1024


def _write_pieces(fd: int, pieces: Iterable[bytes]) -> None:
    """Write the concatenation of `pieces` without building it: small pieces are gathered
    into a buffer of at most _PIECE_BUFFER_BYTES, big ones written as they are."""
    buffer = bytearray()
    for piece in pieces:
        if len(piece) >= _PIECE_BUFFER_BYTES:
            if buffer:
                _write_all(fd, buffer)
                buffer.clear()
            _write_all(fd, piece)
            continue
        buffer += piece
        if len(buffer) >= _PIECE_BUFFER_BYTES:
            _write_all(fd, buffer)
            buffer.clear()
    if buffer:
        _write_all(fd, buffer)


class WalStorage:
    """`Storage` in a directory: a checksummed write-ahead log and atomic snapshots.

    Opening (the constructor) creates the directory if needed, cleans up what
    an interrupted `write_snapshot` left, and repairs a damaged log as the
    module docstring describes; `statistics()["recovered"]` then says what was
    dropped (None if nothing). Appends are buffered in memory until `sync()`
    (or until about 1 MiB is pending), so a process crash loses unsynced
    records: a suffix, as the contract allows.

    `crash_hook` is for tests: it is called with each name of `SNAPSHOT_STEPS`
    as `write_snapshot` passes that point; raising from it simulates a crash
    there (then `close()` the storage and open the directory again).

    Methods raise `ValueError` once the storage is closed, and `OSError` for
    failures of the file system itself.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: Literal["always", "never"] = "always",
        max_record_bytes: int = MAX_RECORD_BYTES,
        crash_hook: Callable[[str], None] | None = None,
    ) -> None:
        if fsync not in ("always", "never"):
            raise ValueError(f"fsync must be 'always' or 'never', not {fsync!r}")
        if not 0 < max_record_bytes <= 0xFFFFFFFF:
            raise ValueError("max_record_bytes must be in [1, 2**32)")
        self._directory = Path(directory)
        self._fsync_policy = fsync
        self._max_record_bytes = max_record_bytes
        self._crash_hook = crash_hook
        self._fd: int | None = None
        self._closed = False
        self._segment = 0
        self._segment_bytes = 0  # bytes written to the live segment file (header included)
        self._pending = bytearray()  # encoded records not yet written to the file
        self._record_count = 0
        self._snapshot_seq: int | None = None
        self._recovered: dict[str, Any] | None = None
        self._counters = {
            "appends": 0,
            "appended_bytes": 0,
            "rejected_appends": 0,
            "syncs": 0,
            "fsyncs": 0,
            "snapshots": 0,
            "segments_created": 0,
            "segments_deleted": 0,
            "stale_segments_removed": 0,
            "temp_files_removed": 0,
        }
        self._directory.mkdir(parents=True, exist_ok=True)
        self._open()

    # -- public API -------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The directory holding the log and the snapshot."""
        return self._directory

    @property
    def recovered(self) -> dict[str, Any] | None:
        """What opening dropped as damaged (`reason`, `records_kept`, `bytes_truncated`, ...)."""
        return dict(self._recovered) if self._recovered is not None else None

    def append(self, record: bytes) -> None:
        """Add `record` at the end of the log, durable after the next `sync()`."""
        self._check_open()
        try:
            record = _checked_record(record, self._max_record_bytes)
        except (TypeError, ValueError):
            self._counters["rejected_appends"] += 1
            raise
        self._pending += _encode_record(record)
        self._record_count += 1
        self._counters["appends"] += 1
        self._counters["appended_bytes"] += len(record)
        if len(self._pending) >= _FLUSH_THRESHOLD_BYTES:
            self._flush()

    def sync(self) -> None:
        """Write pending records to the live segment and, with fsync="always", fsync it."""
        self._check_open()
        self._flush()
        self._fsync_fd(self._live_fd())
        self._counters["syncs"] += 1

    def records(self) -> list[bytes]:
        """The records appended since the last snapshot, in order (read back from the file)."""
        self._check_open()
        self._flush()
        buf = self._segment_path(self._segment).read_bytes()
        try:
            _check_segment_header(buf, self._segment)
        except _Damaged as damage:
            raise StorageCorrupted(f"{self._segment_path(self._segment)}: {damage}") from None
        records, end, problem = _scan_records(buf, _SEGMENT_HEADER_BYTES, self._max_record_bytes)
        if problem is not None or end != self._segment_bytes:
            raise StorageCorrupted(
                f"{self._segment_path(self._segment)}: {problem or 'unexpected size'} at {end}"
            )
        return records

    def write_snapshot(self, seq: int, data: bytes, *, carry_over: Sequence[bytes] = ()) -> None:
        """Atomically store `(seq, data)` and make the records exactly `carry_over`.

        Durable when it returns (with fsync="always"); see the module docstring
        for the steps and why a crash between any two of them is harmless.
        """
        self._check_open()
        data = _checked_snapshot(seq, data, self._snapshot_seq)
        carried = [_checked_record(record, self._max_record_bytes) for record in carry_over]
        old_segment = self._segment
        new_segment = old_segment + 1
        # 1. The next segment, holding the carried records: durable, not yet live. (Written
        # piece by piece, as the snapshot below: no copy of the records or of the state.)
        segment = [_segment_header(new_segment)]
        for record in carried:
            segment.extend(_record_pieces(record))
        segment_bytes = sum(map(len, segment))
        self._write_file_atomically(self._segment_path(new_segment), segment)
        self._counters["segments_created"] += 1
        self._hook("segment_written")
        # 2. The snapshot naming it, in a temp file.
        temp = self._directory / (_SNAPSHOT_NAME + _TEMP_SUFFIX)
        self._write_file(temp, _snapshot_pieces(seq, new_segment, data))
        self._hook("snapshot_temp_written")
        # 3. Commit point: the rename.
        os.replace(temp, self._directory / _SNAPSHOT_NAME)
        self._fsync_directory()
        old_fd, self._fd = self._fd, None
        if old_fd is not None:
            os.close(old_fd)
        self._pending.clear()
        self._segment = new_segment
        self._segment_bytes = segment_bytes
        self._record_count = len(carried)
        self._snapshot_seq = seq
        self._fd = self._open_for_append(new_segment)
        self._counters["snapshots"] += 1
        self._hook("snapshot_committed")
        # 4. The old segment is garbage now.
        os.unlink(self._segment_path(old_segment))
        self._fsync_directory()
        self._counters["segments_deleted"] += 1
        self._hook("old_segment_deleted")

    def load_snapshot(self) -> tuple[int, bytes] | None:
        """The latest snapshot `(seq, data)` read back from its file, or None."""
        self._check_open()
        if self._snapshot_seq is None:
            return None
        path = self._directory / _SNAPSHOT_NAME
        try:
            seq, segment, data = _decode_snapshot(path.read_bytes())
        except _Damaged as damage:
            raise StorageCorrupted(f"{path}: {damage}") from None
        if seq != self._snapshot_seq or segment != self._segment:
            raise StorageCorrupted(f"{path}: changed since it was written")
        return seq, data

    def close(self) -> None:
        """Write and (with fsync="always") fsync pending records, then close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._pending:
                _write_all(fd, self._pending)
                self._segment_bytes += len(self._pending)
                self._pending.clear()
            self._fsync_fd(fd)
        finally:
            os.close(fd)

    def statistics(self) -> dict[str, Any]:
        """Counters (`appends`, `syncs`, `fsyncs`, `snapshots`, `segments_*`, ...), the
        current `segment`, `records`, `wal_bytes`, `pending_bytes`, `snapshot_seq`,
        the `fsync` policy and `recovered` (None, or what opening dropped)."""
        return {
            **self._counters,
            "fsync": self._fsync_policy,
            "segment": self._segment,
            "records": self._record_count,
            "wal_bytes": self._segment_bytes + len(self._pending),
            "pending_bytes": len(self._pending),
            "snapshot_seq": self._snapshot_seq,
            "recovered": self.recovered,
        }

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- opening and recovery -----------------------------------------------------------

    def _open(self) -> None:
        """Clean up leftovers, pick the live segment, repair it, open it for appending."""
        names = sorted(os.listdir(self._directory))
        changed = False
        for name in names:
            if name.endswith(_TEMP_SUFFIX):
                os.unlink(self._directory / name)
                self._counters["temp_files_removed"] += 1
                changed = True
        segments = {
            index: self._directory / name
            for name in names
            if (index := _segment_index(name)) is not None
        }
        had_segments = bool(segments)
        live = 0
        snapshot_path = self._directory / _SNAPSHOT_NAME
        if snapshot_path.exists():
            buf = snapshot_path.read_bytes()
            try:
                self._snapshot_seq, live, _data = _decode_snapshot(buf)
            except _Damaged as damage:
                # The records only mean something on top of this snapshot: drop them too.
                dropped = len(buf)
                for path in segments.values():
                    dropped += path.stat().st_size
                    os.unlink(path)
                    self._counters["segments_deleted"] += 1
                segments = {}
                os.replace(snapshot_path, self._directory / _CORRUPT_SNAPSHOT_NAME)
                changed = True
                self._note_recovery(f"corrupt snapshot: {damage}", 0, dropped)
        for index, path in segments.items():
            if index != live:  # uncommitted (higher) or compacted (lower)
                os.unlink(path)
                self._counters["stale_segments_removed"] += 1
                self._counters["segments_deleted"] += 1
                changed = True
        if changed:
            self._fsync_directory()
        self._segment = live
        if live in segments:
            self._repair_segment(live)
        else:
            if self._recovered is None and (self._snapshot_seq is not None or had_segments):
                self._note_recovery("missing segment", 0, 0)
            self._create_empty_segment(live)
        self._fd = self._open_for_append(live)

    def _repair_segment(self, index: int) -> None:
        """Validate segment `index`, truncating it before its first bad record."""
        path = self._segment_path(index)
        buf = path.read_bytes()
        try:
            _check_segment_header(buf, index)
        except _Damaged as damage:
            self._note_recovery(str(damage), 0, len(buf))
            self._create_empty_segment(index)
            return
        records, end, problem = _scan_records(buf, _SEGMENT_HEADER_BYTES, self._max_record_bytes)
        self._record_count = len(records)
        self._segment_bytes = end
        if problem is not None:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, end)
                self._fsync_fd(fd)
            finally:
                os.close(fd)
            self._note_recovery(problem, len(records), len(buf) - end, offset=end)

    def _create_empty_segment(self, index: int) -> None:
        header = _segment_header(index)
        self._write_file_atomically(self._segment_path(index), (header,))
        self._counters["segments_created"] += 1
        self._record_count = 0
        self._segment_bytes = len(header)

    def _note_recovery(
        self, reason: str, records_kept: int, bytes_truncated: int, *, offset: int | None = None
    ) -> None:
        self._recovered = {
            "reason": reason,
            "segment": self._segment,
            "records_kept": records_kept,
            "bytes_truncated": bytes_truncated,
            "offset": offset,
        }

    # -- file helpers --------------------------------------------------------------------

    def _segment_path(self, index: int) -> Path:
        return self._directory / _segment_name(index)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("storage is closed")

    def _live_fd(self) -> int:
        if self._fd is None:  # only after a failed write_snapshot: reopen to go on
            self._fd = self._open_for_append(self._segment)
        return self._fd

    def _open_for_append(self, index: int) -> int:
        return os.open(self._segment_path(index), os.O_WRONLY | os.O_APPEND)

    def _flush(self) -> None:
        """Hand pending records to the operating system (no fsync)."""
        if self._pending:
            _write_all(self._live_fd(), self._pending)
            self._segment_bytes += len(self._pending)
            self._pending.clear()

    def _hook(self, step: str) -> None:
        if self._crash_hook is not None:
            self._crash_hook(step)

    def _fsync_fd(self, fd: int) -> None:
        if self._fsync_policy == "always":
            os.fsync(fd)
            self._counters["fsyncs"] += 1

    def _fsync_directory(self) -> None:
        if self._fsync_policy == "always":
            fd = os.open(self._directory, os.O_RDONLY)
            try:
                os.fsync(fd)
                self._counters["fsyncs"] += 1
            finally:
                os.close(fd)

    def _write_file(self, path: Path, pieces: Iterable[bytes]) -> None:
        """Create or replace `path` with the concatenation of `pieces`, fsynced (not atomic:
        the caller renames)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_pieces(fd, pieces)
            self._fsync_fd(fd)
        finally:
            os.close(fd)

    def _write_file_atomically(self, path: Path, pieces: Iterable[bytes]) -> None:
        """Replace `path` by a file holding the concatenation of `pieces`: temp file, fsync,
        rename, fsync directory."""
        temp = path.with_name(path.name + _TEMP_SUFFIX)
        self._write_file(temp, pieces)
        os.replace(temp, path)
        self._fsync_directory()


@dataclass(frozen=True)
class WalScan:
    """What a WAL directory holds, read without changing it (`scan_wal_directory`).

    `snapshot`: (seq, data) of the snapshot file, or None; `snapshot_damage`: why the
    snapshot file is unusable, or None. `segment`: the live segment's file name, or None;
    `records`: its intact records in order; `damage`: None, or (reason, record index,
    byte offset) of the first bad record or of a bad segment header (opening the WAL
    keeps only the records before it). `leftovers`: other files opening would remove."""

    snapshot: tuple[int, bytes] | None
    snapshot_damage: str | None
    segment: str | None
    records: list[bytes]
    damage: tuple[str, int, int] | None
    leftovers: list[str]


def scan_wal_directory(directory: str | os.PathLike[str], *,
                       max_record_bytes: int = MAX_RECORD_BYTES) -> WalScan:
    """Read a `WalStorage` directory and check every checksum, changing nothing (for
    `bft wal inspect`); OSError if it cannot be read."""
    path = Path(directory)
    names = sorted(os.listdir(path))
    segments = {index: name for name in names if (index := _segment_index(name)) is not None}
    snapshot: tuple[int, bytes] | None = None
    snapshot_damage = None
    live = 0
    if _SNAPSHOT_NAME in names:
        try:
            seq, live, data = _decode_snapshot((path / _SNAPSHOT_NAME).read_bytes())
            snapshot = (seq, data)
        except _Damaged as bad_snapshot:
            snapshot_damage = str(bad_snapshot)
    leftovers = [name for name in names if name.endswith(_TEMP_SUFFIX)
                 or (name in segments.values() and name != segments.get(live))]
    records: list[bytes] = []
    damage: tuple[str, int, int] | None = None
    segment = segments.get(live)
    if segment is not None:
        buf = (path / segment).read_bytes()
        try:
            _check_segment_header(buf, live)
        except _Damaged as bad:
            damage = (str(bad), 0, 0)
        else:
            records, offset, reason = _scan_records(buf, _SEGMENT_HEADER_BYTES,
                                                    max_record_bytes)
            if reason is not None:
                damage = (reason, len(records), offset)
    elif snapshot is not None or segments:
        damage = ("missing segment", 0, 0)
    return WalScan(snapshot, snapshot_damage, segment, records, damage, leftovers)

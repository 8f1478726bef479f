"""Tests of bft.storage: the Storage contract, the WAL file format, recovery and compaction."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bft import storage as storage_module
from bft.storage import (
    SNAPSHOT_STEPS,
    MemoryStorage,
    Storage,
    StorageCorrupted,
    WalStorage,
)

RECORDS = [b"first", b"", b"third record", bytes(range(256))]


class SimulatedCrash(Exception):
    pass


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("wal-"))


def only_segment(directory: Path) -> Path:
    names = segment_files(directory)
    assert len(names) == 1, names
    return directory / names[0]


def encoded_size(payload: bytes) -> int:
    return 8 + len(payload)


@pytest.fixture(params=["memory", "wal"])
def make_storage(request, tmp_path):
    """A factory of empty storages of each kind (same contract)."""

    def make(**kwargs):
        if request.param == "memory":
            return MemoryStorage(**kwargs)
        return WalStorage(tmp_path / "store", **kwargs)

    return make


# -- the contract, for both implementations ------------------------------------------


def test_round_trip(make_storage):
    s = make_storage()
    assert isinstance(s, Storage)
    assert s.records() == []
    assert s.load_snapshot() is None
    for record in RECORDS:
        s.append(record)
    assert s.records() == RECORDS  # pending records are visible before sync
    s.sync()
    assert s.records() == RECORDS
    s.close()


def test_append_accepts_bytes_like_and_rejects_others(make_storage):
    s = make_storage()
    s.append(bytearray(b"ba"))
    s.append(memoryview(b"mv"))
    with pytest.raises(TypeError):
        s.append("text")  # type: ignore[arg-type]
    assert s.records() == [b"ba", b"mv"]
    assert all(type(r) is bytes for r in s.records())
    s.close()


def test_oversized_record_is_rejected_and_storage_stays_usable(make_storage):
    s = make_storage(max_record_bytes=10)
    s.append(b"x" * 10)
    with pytest.raises(ValueError, match="max_record_bytes"):
        s.append(b"x" * 11)
    s.append(b"ok")
    assert s.records() == [b"x" * 10, b"ok"]
    stats = s.statistics()
    assert stats["rejected_appends"] == 1
    assert stats["appends"] == 2
    with pytest.raises(ValueError, match="max_record_bytes"):
        s.write_snapshot(1, b"s", carry_over=[b"y" * 11])
    assert s.load_snapshot() is None  # nothing changed
    s.close()


def test_snapshot_drops_earlier_records_and_keeps_carry_over(make_storage):
    s = make_storage()
    s.append(b"a")
    s.sync()
    s.append(b"b")  # not synced: dropped all the same
    s.write_snapshot(10, b"state@10", carry_over=[b"view=3", b"vote"])
    assert s.load_snapshot() == (10, b"state@10")
    assert s.records() == [b"view=3", b"vote"]
    s.append(b"c")
    assert s.records() == [b"view=3", b"vote", b"c"]
    s.write_snapshot(20, b"state@20")
    assert s.records() == []
    assert s.load_snapshot() == (20, b"state@20")
    s.write_snapshot(20, b"again@20")  # the same seq is allowed
    assert s.load_snapshot() == (20, b"again@20")
    s.close()


@pytest.mark.parametrize("seq", [-1, 2**64, True, 1.5])
def test_snapshot_seq_must_be_a_u64(make_storage, seq):
    s = make_storage()
    with pytest.raises(ValueError):
        s.write_snapshot(seq, b"x")
    s.close()


def test_snapshot_seq_may_not_go_back(make_storage):
    s = make_storage()
    s.write_snapshot(5, b"five")
    with pytest.raises(ValueError, match="below"):
        s.write_snapshot(4, b"four")
    assert s.load_snapshot() == (5, b"five")
    s.close()


def test_statistics_counters_common(make_storage):
    s = make_storage()
    s.append(b"abc")
    s.append(b"de")
    s.sync()
    s.write_snapshot(3, b"snap", carry_over=[b"k"])
    stats = s.statistics()
    assert stats["appends"] == 2
    assert stats["appended_bytes"] == 5
    assert stats["syncs"] == 1
    assert stats["snapshots"] == 1
    assert stats["records"] == 1
    assert stats["snapshot_seq"] == 3
    s.close()


# -- MemoryStorage specifics ----------------------------------------------------------


def test_memory_crash_loses_only_unsynced_records():
    s = MemoryStorage()
    s.append(b"a")
    s.sync()
    s.append(b"b")
    s.append(b"c")
    assert s.crash() == 2
    assert s.records() == [b"a"]
    s.write_snapshot(1, b"snap", carry_over=[b"kept"])
    assert s.crash() == 0  # snapshot and carry-over are durable at once
    assert s.records() == [b"kept"]
    s.append(b"d")
    s.close()  # close makes pending durable, and the object stays usable
    assert s.crash() == 0
    assert s.records() == [b"kept", b"d"]
    stats = s.statistics()
    assert stats["crashes"] == 3
    assert stats["lost_records"] == 2


# -- WalStorage: reopen, format, recovery ---------------------------------------------


def test_reopen_after_close(tmp_path):
    with WalStorage(tmp_path) as s:
        for record in RECORDS:
            s.append(record)
        # no sync: close writes and fsyncs pending records
    with WalStorage(tmp_path) as s:
        assert s.records() == RECORDS
        assert s.recovered is None
        assert s.statistics()["records"] == len(RECORDS)
        s.append(b"more")
        s.sync()
    with WalStorage(tmp_path) as s:
        assert s.records() == RECORDS + [b"more"]
        assert s.load_snapshot() is None


def test_closed_storage_refuses_use(tmp_path):
    s = WalStorage(tmp_path)
    s.close()
    s.close()  # idempotent
    for call in (
        lambda: s.append(b"x"),
        s.sync,
        s.records,
        s.load_snapshot,
        lambda: s.write_snapshot(1, b"x"),
    ):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_invalid_options(tmp_path):
    with pytest.raises(ValueError, match="fsync"):
        WalStorage(tmp_path, fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_record_bytes"):
        WalStorage(tmp_path, max_record_bytes=0)


def test_record_layout_on_disk(tmp_path):
    """A record is length (u32 LE), CRC32C of length bytes + payload (u32 LE), payload."""
    with WalStorage(tmp_path) as s:
        s.append(b"hello")
    buf = only_segment(tmp_path).read_bytes()
    record = buf[-13:]
    length, crc = struct.unpack("<II", record[:8])
    assert length == 5
    assert record[8:] == b"hello"
    assert crc == crc32c.crc32c(b"hello", crc32c.crc32c(record[:4]))
    assert buf.startswith(b"BFTW")


def write_records(directory: Path, records: list[bytes]) -> Path:
    with WalStorage(directory) as s:
        for record in records:
            s.append(record)
    return only_segment(directory)


def test_torn_tail_at_every_byte_is_truncated(tmp_path):
    last = b"the last record, torn anywhere"
    segment = write_records(tmp_path / "full", RECORDS + [last])
    full = segment.read_bytes()
    intact_end = len(full) - encoded_size(last)
    for cut in range(intact_end, len(full)):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / segment.name).write_bytes(full[:cut])
        with WalStorage(directory) as s:
            assert s.records() == RECORDS, cut
            if cut == intact_end:
                assert s.recovered is None
            else:
                recovered = s.recovered
                assert recovered is not None, cut
                assert recovered["records_kept"] == len(RECORDS)
                assert recovered["bytes_truncated"] == cut - intact_end
                assert recovered["offset"] == intact_end
                expected = "torn record header" if cut - intact_end < 8 else "torn record"
                assert recovered["reason"] == expected
                assert s.statistics()["recovered"] == recovered
            assert (directory / segment.name).stat().st_size == intact_end
            s.append(b"after")
        with WalStorage(directory) as s:  # the repair holds: a clean log
            assert s.recovered is None
            assert s.records() == RECORDS + [b"after"]


def test_bit_flip_anywhere_in_last_record_is_detected(tmp_path):
    last = b"flip me"
    segment = write_records(tmp_path / "full", RECORDS + [last])
    full = segment.read_bytes()
    start = len(full) - encoded_size(last)
    for bit in range((len(full) - start) * 8):
        damaged = bytearray(full)
        damaged[start + bit // 8] ^= 1 << (bit % 8)
        directory = tmp_path / f"bit{bit}"
        directory.mkdir()
        (directory / segment.name).write_bytes(bytes(damaged))
        with WalStorage(directory) as s:
            assert s.records() == RECORDS, bit
            assert s.recovered is not None
            assert s.recovered["records_kept"] == len(RECORDS)
            assert s.recovered["bytes_truncated"] == len(full) - start


def test_impossible_length_is_detected(tmp_path):
    segment = write_records(tmp_path, RECORDS)
    with segment.open("ab") as f:
        f.write(struct.pack("<II", 0xFFFFFFFF, 0) + b"tail")
    with WalStorage(tmp_path) as s:
        assert s.records() == RECORDS
        assert s.recovered["reason"] == "impossible record length"
        assert s.recovered["bytes_truncated"] == 12


@pytest.mark.parametrize("garbage", [b"\x00" * 4096, b"\x00" * 7, b"\xff" * 100])
def test_fixed_garbage_tail_is_detected(tmp_path, garbage):
    segment = write_records(tmp_path, RECORDS)
    with segment.open("ab") as f:
        f.write(garbage)
    with WalStorage(tmp_path) as s:
        assert s.records() == RECORDS
        assert s.recovered["bytes_truncated"] == len(garbage)


@given(garbage=st.binary(min_size=1, max_size=300))
@settings(max_examples=60)
def test_random_garbage_tail_is_detected(garbage):
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        segment = write_records(directory, RECORDS)
        with segment.open("ab") as f:
            f.write(garbage)
        with WalStorage(directory) as s:
            assert s.records() == RECORDS
            assert s.recovered is not None
            assert s.recovered["bytes_truncated"] == len(garbage)


def test_seeded_random_tail_damage(tmp_path):
    """Random records, then a random mix of truncation and flips in the tail region."""
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    for trial in range(20):
        records = [rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 8))]
        directory = tmp_path / f"t{trial}"
        full = write_records(directory, records).read_bytes()
        keep = rng.randrange(len(records))  # records[keep:] get damaged
        boundary = len(full) - sum(encoded_size(r) for r in records[keep:])
        damaged = bytearray(full[: rng.randrange(boundary + 1, len(full) + 1)])
        first_damaged_end = min(len(damaged), boundary + encoded_size(records[keep]))
        damaged[rng.randrange(boundary, first_damaged_end)] ^= 1 << rng.randrange(8)
        only_segment(directory).write_bytes(bytes(damaged))
        with WalStorage(directory) as s:
            assert s.records() == records[:keep], (seed, trial)
            assert s.recovered["bytes_truncated"] == len(damaged) - boundary


def test_corruption_in_the_middle_drops_everything_after(tmp_path):
    records = [b"r0", b"r1", b"r2-corrupt", b"r3", b"r4"]
    segment = write_records(tmp_path, records)
    buf = bytearray(segment.read_bytes())
    offset = len(buf) - sum(encoded_size(r) for r in records[2:])
    buf[offset + 8] ^= 0x01  # first payload byte of r2
    segment.write_bytes(bytes(buf))
    with WalStorage(tmp_path) as s:
        assert s.records() == [b"r0", b"r1"]  # r3, r4 are intact but never replayed
        assert s.recovered == {
            "reason": "bad record checksum",
            "segment": 0,
            "records_kept": 2,
            "bytes_truncated": len(buf) - offset,
            "offset": offset,
        }


def test_bad_segment_header_drops_the_segment(tmp_path):
    segment = write_records(tmp_path, RECORDS)
    buf = bytearray(segment.read_bytes())
    buf[10] ^= 0xFF
    segment.write_bytes(bytes(buf))
    with WalStorage(tmp_path) as s:
        assert s.records() == []
        assert s.recovered["reason"] == "bad segment header checksum"
        assert s.recovered["bytes_truncated"] == len(buf)
        s.append(b"new")
    with WalStorage(tmp_path) as s:
        assert s.recovered is None
        assert s.records() == [b"new"]


def test_segment_with_wrong_index_is_rejected(tmp_path):
    """A segment file that claims another index than its name says is damage."""
    with WalStorage(tmp_path) as s:
        s.write_snapshot(1, b"snap", carry_over=[b"y"])
    live = only_segment(tmp_path)
    live.write_bytes(storage_module._segment_header(7) + live.read_bytes()[20:])
    with WalStorage(tmp_path) as s:
        assert s.recovered["reason"] == "segment index does not match its file name"
        assert s.records() == []
        assert s.load_snapshot() == (1, b"snap")


# -- snapshots, compaction and crashes between steps ------------------------------------


def test_snapshot_compaction_and_reopen(tmp_path):
    with WalStorage(tmp_path) as s:
        for i in range(100):
            s.append(b"record %d" % i)
        s.sync()
        big = s.statistics()["wal_bytes"]
        s.write_snapshot(100, b"state@100", carry_over=[b"view 2"])
        s.append(b"after")
        s.sync()
        stats = s.statistics()
        assert stats["wal_bytes"] < big
        assert stats["segment"] == 1
        assert stats["segments_deleted"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "snapshot",
        "wal-00000000000000000001.log",
    ]
    with WalStorage(tmp_path) as s:
        assert s.recovered is None
        assert s.load_snapshot() == (100, b"state@100")
        assert s.records() == [b"view 2", b"after"]
        for round_ in range(3):  # the log stays one segment, whatever the number of snapshots
            s.write_snapshot(200 + round_, b"state %d" % round_)
            s.append(b"r%d" % round_)
    assert segment_files(tmp_path) == ["wal-00000000000000000004.log"]
    with WalStorage(tmp_path) as s:
        assert s.load_snapshot() == (202, b"state 2")
        assert s.records() == [b"r2"]


OLD_STATE = ((5, b"old snapshot"), [b"old-1", b"old-2"])
NEW_STATE = ((9, b"new snapshot"), [b"carried"])


def prepare_old_state(directory: Path, crash_at: list[str] | None = None) -> WalStorage:
    """Storage in OLD_STATE; afterwards, write_snapshot 'crashes' at the steps in `crash_at`."""
    armed = False

    def hook(reached: str) -> None:
        if armed and crash_at is not None and reached in crash_at:
            raise SimulatedCrash(reached)

    s = WalStorage(directory, crash_hook=hook)
    s.write_snapshot(*OLD_STATE[0])
    for record in OLD_STATE[1]:
        s.append(record)
    s.sync()
    armed = True
    return s


@pytest.mark.parametrize("step", SNAPSHOT_STEPS)
def test_crash_between_snapshot_steps(tmp_path, step):
    s = prepare_old_state(tmp_path, crash_at=[step])
    with pytest.raises(SimulatedCrash):
        s.write_snapshot(*NEW_STATE[0], carry_over=NEW_STATE[1])
    s.close()  # nothing pending: this releases the files, as a crash would

    committed = SNAPSHOT_STEPS.index(step) >= SNAPSHOT_STEPS.index("snapshot_committed")
    snapshot, records = NEW_STATE if committed else OLD_STATE
    with WalStorage(tmp_path) as s:
        assert s.recovered is None  # an interrupted snapshot is not damage
        assert s.load_snapshot() == snapshot
        assert s.records() == records
        s.append(b"later")
    # Opening cleaned up: one snapshot, one segment, no temp files.
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "snapshot" and len(names) == 2 and names[1].startswith("wal-"), names
    with WalStorage(tmp_path) as s:
        assert s.records() == records + [b"later"]
        s.write_snapshot(50, b"fine", carry_over=[b"z"])
    with WalStorage(tmp_path) as s:
        assert s.load_snapshot() == (50, b"fine")
        assert s.records() == [b"z"]


def test_storage_goes_on_after_an_interrupted_snapshot(tmp_path):
    """A write_snapshot that failed before committing leaves the old state in use."""
    crash_at = ["snapshot_temp_written"]
    s = prepare_old_state(tmp_path, crash_at=crash_at)
    with pytest.raises(SimulatedCrash):
        s.write_snapshot(*NEW_STATE[0], carry_over=NEW_STATE[1])
    assert s.load_snapshot() == OLD_STATE[0]
    s.append(b"more")
    assert s.records() == OLD_STATE[1] + [b"more"]
    crash_at.clear()
    s.write_snapshot(*NEW_STATE[0], carry_over=NEW_STATE[1])
    s.close()
    with WalStorage(tmp_path) as s:
        assert (s.load_snapshot(), s.records()) == NEW_STATE


def test_leftover_files_of_a_crash_are_cleaned_up(tmp_path):
    """Intermediate file states reproduced by hand: torn temp files and stale segments."""
    prepare_old_state(tmp_path).close()
    live = only_segment(tmp_path)  # wal-...1.log
    (tmp_path / "snapshot.tmp").write_bytes(b"BFTS\x01")  # torn temp snapshot
    (tmp_path / "wal-00000000000000000002.log.tmp").write_bytes(b"BF")  # torn temp segment
    (tmp_path / "wal-00000000000000000002.log").write_bytes(b"uncommitted")  # higher: stale
    (tmp_path / "wal-00000000000000000000.log").write_bytes(b"compacted")  # lower: stale
    with WalStorage(tmp_path) as s:
        assert s.recovered is None
        assert s.load_snapshot() == OLD_STATE[0]
        assert s.records() == OLD_STATE[1]
        stats = s.statistics()
        assert stats["temp_files_removed"] == 2
        assert stats["stale_segments_removed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot", live.name]


def test_corrupt_snapshot_drops_snapshot_and_records(tmp_path):
    prepare_old_state(tmp_path).close()
    path = tmp_path / "snapshot"
    buf = bytearray(path.read_bytes())
    buf[-6] ^= 0x40  # inside the data
    path.write_bytes(bytes(buf))
    with WalStorage(tmp_path) as s:
        assert s.load_snapshot() is None
        assert s.records() == []
        assert s.recovered["reason"] == "corrupt snapshot: bad snapshot checksum"
        s.append(b"fresh")
    assert (tmp_path / "snapshot.corrupt").read_bytes() == bytes(buf)  # kept for a post-mortem
    with WalStorage(tmp_path) as s:
        assert s.recovered is None
        assert s.records() == [b"fresh"]


def test_missing_live_segment_is_reported(tmp_path):
    prepare_old_state(tmp_path).close()
    only_segment(tmp_path).unlink()
    with WalStorage(tmp_path) as s:
        assert s.load_snapshot() == OLD_STATE[0]
        assert s.records() == []
        assert s.recovered["reason"] == "missing segment"


def test_files_changed_under_an_open_storage_raise(tmp_path):
    s = prepare_old_state(tmp_path)
    segment = only_segment(tmp_path)
    buf = bytearray(segment.read_bytes())
    buf[-1] ^= 1
    segment.write_bytes(bytes(buf))
    with pytest.raises(StorageCorrupted):
        s.records()
    (tmp_path / "snapshot").write_bytes(b"junk")
    with pytest.raises(StorageCorrupted):
        s.load_snapshot()
    s.close()


def test_process_crash_keeps_synced_records(tmp_path):
    """A real process dies without closing: every synced record survives, in order."""
    child = textwrap.dedent(
        f"""
        import os
        from bft.storage import WalStorage
        s = WalStorage({str(tmp_path)!r}, fsync="never")
        s.write_snapshot(1, b"snap", carry_over=[b"c"])
        for i in range(50):
            s.append(b"synced %d" % i)
            s.sync()
        s.append(b"unsynced")
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
    with WalStorage(tmp_path) as s:
        records = s.records()
        assert s.load_snapshot() == (1, b"snap")
    synced = [b"c"] + [b"synced %d" % i for i in range(50)]
    assert records[: len(synced)] == synced
    assert records[len(synced) :] in ([], [b"unsynced"])


# -- fsync policy and statistics --------------------------------------------------------


@pytest.fixture
def fsync_calls(monkeypatch):
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(storage_module.os, "fsync", counting_fsync)
    return calls


def test_fsync_never_never_fsyncs_and_still_works(tmp_path, fsync_calls):
    with WalStorage(tmp_path, fsync="never") as s:
        s.append(b"a")
        s.sync()
        s.write_snapshot(2, b"snap", carry_over=[b"b"])
        s.append(b"c")
        s.sync()
        assert s.statistics()["fsyncs"] == 0
        assert s.statistics()["fsync"] == "never"
    with WalStorage(tmp_path, fsync="never") as s:
        assert s.load_snapshot() == (2, b"snap")
        assert s.records() == [b"b", b"c"]
    assert fsync_calls == []


def test_fsync_always_fsyncs_on_every_sync(tmp_path, fsync_calls):
    s = WalStorage(tmp_path)
    before = len(fsync_calls)
    assert s.statistics()["fsyncs"] == before  # creating segment 0: file and directory
    for i in range(3):
        s.append(b"r%d" % i)
        s.sync()
    assert len(fsync_calls) == before + 3
    s.write_snapshot(1, b"snap")
    # new segment file + dir, snapshot file + dir, directory after deleting the old segment
    assert len(fsync_calls) == before + 3 + 5
    assert s.statistics()["fsyncs"] == len(fsync_calls)
    s.close()


def test_wal_statistics(tmp_path):
    s = WalStorage(tmp_path)
    header = s.statistics()["wal_bytes"]
    assert s.statistics() == {
        "appends": 0,
        "appended_bytes": 0,
        "rejected_appends": 0,
        "syncs": 0,
        "fsyncs": 2,
        "snapshots": 0,
        "segments_created": 1,
        "segments_deleted": 0,
        "stale_segments_removed": 0,
        "temp_files_removed": 0,
        "fsync": "always",
        "segment": 0,
        "records": 0,
        "wal_bytes": header,
        "pending_bytes": 0,
        "snapshot_seq": None,
        "recovered": None,
    }
    s.append(b"12345")
    stats = s.statistics()
    assert stats["pending_bytes"] == 13
    assert stats["wal_bytes"] == header + 13
    s.sync()
    stats = s.statistics()
    assert (stats["pending_bytes"], stats["wal_bytes"], stats["syncs"]) == (0, header + 13, 1)
    s.write_snapshot(4, b"snap", carry_over=[b"kk"])
    stats = s.statistics()
    assert stats["segment"] == 1
    assert stats["segments_created"] == 2
    assert stats["segments_deleted"] == 1
    assert stats["snapshots"] == 1
    assert stats["snapshot_seq"] == 4
    assert stats["records"] == 1
    assert stats["wal_bytes"] == header + 10
    s.close()


def test_large_appends_are_flushed_without_sync(tmp_path):
    s = WalStorage(tmp_path)
    record = b"x" * (600 * 1024)
    s.append(record)
    s.append(record)  # crosses the ~1 MiB threshold: handed to the OS
    assert s.statistics()["pending_bytes"] == 0
    assert only_segment(tmp_path).stat().st_size == s.statistics()["wal_bytes"]
    assert s.records() == [record, record]
    s.close()


# -- model-based: WalStorage behaves like MemoryStorage across reopens -------------------


class WalMatchesModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tempdir = tempfile.TemporaryDirectory()
        self.wal = WalStorage(self.tempdir.name, max_record_bytes=64)
        self.model = MemoryStorage(max_record_bytes=64)
        self.seq = 0

    @rule(record=st.binary(max_size=64))
    def append(self, record: bytes) -> None:
        self.wal.append(record)
        self.model.append(record)

    @rule()
    def sync(self) -> None:
        self.wal.sync()
        self.model.sync()

    @rule(
        step=st.integers(0, 3),
        data=st.binary(max_size=32),
        carry=st.lists(st.binary(max_size=16), max_size=3),
    )
    def snapshot(self, step: int, data: bytes, carry: list[bytes]) -> None:
        self.seq += step
        self.wal.write_snapshot(self.seq, data, carry_over=carry)
        self.model.write_snapshot(self.seq, data, carry_over=carry)

    @rule()
    def reopen(self) -> None:
        self.wal.close()
        self.model.close()
        self.wal = WalStorage(self.tempdir.name, max_record_bytes=64)
        assert self.wal.recovered is None

    @invariant()
    def same_contents(self) -> None:
        assert self.wal.records() == self.model.records()
        assert self.wal.load_snapshot() == self.model.load_snapshot()

    def teardown(self) -> None:
        self.wal.close()
        self.tempdir.cleanup()


WalMatchesModel.TestCase.settings = settings(max_examples=30, stateful_step_count=20)
test_wal_matches_model = WalMatchesModel.TestCase


def test_only_a_torn_tail_keeps_every_signed_record(tmp_path):
    """Issue 18 (weaker spot): which damage on open may have lost records of messages the
    replica signed and sent (bft.storage.votes_may_be_lost). A torn tail holds only records
    never synced, so nothing they describe was sent; any other damage may hold votes."""
    from bft.storage import votes_may_be_lost

    last = b"the last record"
    segment = write_records(tmp_path / "full", RECORDS + [last])
    full = segment.read_bytes()
    cases = {"torn": full[:-3], "middle": bytearray(full)}
    offset = len(full) - encoded_size(last) - encoded_size(RECORDS[-1])
    cases["middle"][offset + 8] ^= 0x01  # a payload byte of a synced record, not the last
    verdicts = {}
    for name, data in cases.items():
        directory = tmp_path / name
        directory.mkdir()
        (directory / segment.name).write_bytes(bytes(data))
        with WalStorage(directory) as s:
            verdicts[name] = (s.recovered["reason"], votes_may_be_lost(s.recovered))
    assert verdicts == {"torn": ("torn record", False), "middle": ("bad record checksum", True)}
    with WalStorage(tmp_path / "full") as s:  # undamaged
        assert s.recovered is None and not votes_may_be_lost(s.recovered)
    prepare_old_state(tmp_path / "snap").close()
    path = tmp_path / "snap" / "snapshot"
    buf = bytearray(path.read_bytes())
    buf[-6] ^= 0x40
    path.write_bytes(bytes(buf))
    with WalStorage(tmp_path / "snap") as s:
        assert votes_may_be_lost(s.recovered)

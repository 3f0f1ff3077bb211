"""Large graph state values stored once in SQLite (``engine.value_parts``, ``backends.sqlite.stored_values``).

A value of 64 KB or more (the 1 MB string no step touches, a large mutable dict, a growing list) is
kept once by its SHA-256, however many records and executions hold it; every reader gets the whole
bytes back from ``get``. Checked with a real graph: the bytes each record stores, the records read
back whole and exact, values dropped with the last record holding them (deletes, retention,
``replace``), a damaged or missing value refused on read, stores that must keep values inline
(encryption, compression, other backends), export to another store, and worker processes killed
with SIGKILL at varied points and times, alone and next to a second worker sharing the store.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import large_value_graphs  # noqa: E402
from kill_at_marker import kill_when_marked  # noqa: E402

from spark_ckpt.backends.sqlite import SqliteBackend  # noqa: E402
from spark_ckpt.codec import Codec  # noqa: E402
from spark_ckpt.codec.crc_shift import crc32_continued  # noqa: E402
from spark_ckpt.engine.records import decode_record  # noqa: E402
from spark_ckpt.errors import CorruptCheckpointError  # noqa: E402

WORKER = Path(__file__).parent / "large_value_worker.py"
STEPS = 40
MB = 1 << 20


@contextmanager
def _connected(db: Path) -> Iterator[sqlite3.Connection]:
    """A connection to ``db``, committed and closed at the end (``with connect()`` only commits)."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def _rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with _connected(db) as conn:
        return conn.execute(sql, params).fetchall()


def _bookkeeping_consistent(db: Path) -> None:
    """Every reference has its value, every value a reference, every reference a row."""
    assert _rows(db, "SELECT digest FROM [checkpoints:value_refs] EXCEPT SELECT digest FROM [checkpoints:values]") == []
    assert _rows(db, "SELECT digest FROM [checkpoints:values] EXCEPT SELECT digest FROM [checkpoints:value_refs]") == []
    assert _rows(db, "SELECT position FROM [checkpoints:value_refs] EXCEPT SELECT rowid FROM checkpoints") == []
    assert _rows(db, "SELECT count(*) FROM [checkpoints:values] WHERE length(data) != size") == [(0,)]


def _consistent(db: Path) -> list:
    """``_bookkeeping_consistent``, and every record reads back and decodes. The records, decoded."""
    _bookkeeping_consistent(db)
    backend = SqliteBackend(db)
    try:
        return [decode_record(Codec(), backend.get(h.checkpoint_id).blob, h) for h in backend.list()]
    finally:
        backend.close()


def _stored_run(tmp_path: Path, steps: int) -> Path:
    """A store (``c.db`` in ``tmp_path``) holding one uninterrupted run of ``steps`` counts."""
    db = tmp_path / "c.db"
    graph = large_value_graphs.build(db, steps)
    try:
        asyncio.run(graph.run({"go": 1}))
    finally:
        graph.close()
    return db


def _reference(tmp_path: Path, steps: int = STEPS):
    """The uninterrupted run in a store of its own: (result content, final record made whole)."""
    graph = large_value_graphs.build(tmp_path / f"reference-{random.random()}.db", steps)
    try:
        result = asyncio.run(graph.run({"go": 1}))
        return result.content, graph.get_checkpoint()
    finally:
        graph.close()


def _assert_same(graph, result, reference) -> None:
    content, expected = reference
    final = graph.get_checkpoint()
    assert result.content == content
    assert final.status == "completed"
    assert final.graph_state == expected.graph_state
    assert final.graph_state["blob"] == large_value_graphs.BLOB
    assert final.node_states == expected.node_states


# -- the checksum of a record whose values are not read again ---------------------------------------
@pytest.mark.parametrize("length", [0, 1, 3, 64, 4097, 65_536, 1_000_003])
def test_the_crc_of_joined_parts_is_zlibs(length: int) -> None:
    rng = random.Random(length)
    before, part = rng.randbytes(rng.randrange(200)), rng.randbytes(length)
    assert crc32_continued(zlib.crc32(before), zlib.crc32(part), length) == zlib.crc32(before + part)


# -- what is stored ---------------------------------------------------------------------------------
def test_a_value_no_step_touches_is_stored_once_across_records_and_runs(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    graph = large_value_graphs.build(db, 6)
    try:
        for _ in range(3):  # Spark keeps the state between runs: each run's whole records hold it again
            asyncio.run(graph.run({"go": 1}))
    finally:
        graph.close()
    records = _consistent(db)
    blob_rows = _rows(db, "SELECT size FROM [checkpoints:values] WHERE size >= ?", (MB,))
    assert len(blob_rows) == 1  # the 1 MB string: once, for every record of every run
    stored, whole = _rows(db, "SELECT sum(length(blob)), sum(size) FROM checkpoints")[0]
    whole_records = [r for r in records if not r.partial_state]
    assert len(whole_records) >= 6 and whole >= len(whole_records) * MB  # what readers see
    assert stored < MB // 2  # what the rows hold
    for record in whole_records:
        assert record.graph_state["blob"] == large_value_graphs.BLOB
        assert len(record.graph_state["doc"]["rows"]) == large_value_graphs.DOC_ROWS


def test_records_read_back_exactly_as_with_values_inline(tmp_path: Path) -> None:
    """Every record made whole holds the very state the same run stores with every value inline
    (gzip records cannot keep values apart): superstep by superstep, value by value."""
    histories = []
    for name, config in (("apart", {}), ("inline", {"compression": "gzip"})):
        graph = large_value_graphs.build(tmp_path / f"{name}.db", 12, **config)
        try:
            asyncio.run(graph.run({"go": 1}))
            histories.append([(r.superstep, r.status, r.values, r.next) for r in graph.get_state_history()])
        finally:
            graph.close()
    apart, inline = histories
    assert len(apart) >= 24 and apart == inline
    assert _rows(tmp_path / "apart.db", "SELECT count(*) FROM [checkpoints:values]")[0][0] >= 3


def test_deletes_and_retention_drop_values_no_record_holds(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    graph = large_value_graphs.build(db, 10, retention_count=6)
    try:
        for _ in range(6):
            asyncio.run(graph.run({"go": 1}))
    finally:
        graph.close()
    _consistent(db)
    versions = _rows(db, "SELECT count(*) FROM [checkpoints:values]")[0][0]
    assert versions < 20  # pruned records' doc and log versions went with them
    backend = SqliteBackend(db)
    try:
        headers = backend.list()
        backend.delete([h.checkpoint_id for h in headers[len(headers) // 2:]])
        _consistent(db)
        backend.delete([h.checkpoint_id for h in backend.list()])
    finally:
        backend.close()
    assert _rows(db, "SELECT count(*) FROM [checkpoints:values]") == [(0,)]
    assert _rows(db, "SELECT count(*) FROM [checkpoints:value_refs]") == [(0,)]


def test_replacing_a_record_stores_it_whole_and_drops_its_references(tmp_path: Path) -> None:
    db = _stored_run(tmp_path, 4)
    backend = SqliteBackend(db)
    try:
        (position, digest), *_ = _rows(db, "SELECT position, digest FROM [checkpoints:value_refs] ORDER BY position")
        header = next(h for h in backend.list() if _rows(db, "SELECT 1 FROM checkpoints WHERE rowid = ? AND "
                                                          "checkpoint_id = ?", (position, h.checkpoint_id)))
        before = backend.get(header.checkpoint_id)
        backend.replace(before.header, before.blob)
        assert backend.get(header.checkpoint_id).blob == before.blob
        assert _rows(db, "SELECT count(*) FROM [checkpoints:value_refs] WHERE position = ?", (position,)) == [(0,)]
        assert _rows(db, "SELECT length(blob) FROM checkpoints WHERE rowid = ?", (position,)) == [(before.header.size,)]
        _consistent(db)
    finally:
        backend.close()


# -- damage ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flipped byte", "missing", "shortened"])
def test_a_damaged_value_is_refused_on_read_and_reported_by_verify(tmp_path: Path, damage: str) -> None:
    from spark_ckpt.cli import main

    db = _stored_run(tmp_path, 4)
    (digest,) = _rows(db, "SELECT digest FROM [checkpoints:values] WHERE size >= ?", (MB,))[0]
    holders = {p for (p,) in _rows(db, "SELECT position FROM [checkpoints:value_refs] WHERE digest = ?", (digest,))}
    with _connected(db) as conn:
        if damage == "missing":
            conn.execute("DELETE FROM [checkpoints:values] WHERE digest = ?", (digest,))
        else:
            (data,) = conn.execute("SELECT data FROM [checkpoints:values] WHERE digest = ?", (digest,)).fetchone()
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:] if damage == "flipped byte" else data[:-10]
            conn.execute("UPDATE [checkpoints:values] SET data = ? WHERE digest = ?", (data, digest))
    backend = SqliteBackend(db)
    try:
        damaged = [h for h in backend.list() if _rows(db, "SELECT rowid FROM checkpoints WHERE checkpoint_id = ?",
                                                      (h.checkpoint_id,))[0][0] in holders]
        assert damaged
        for header in damaged:
            with pytest.raises(CorruptCheckpointError):
                decode_record(Codec(), backend.get(header.checkpoint_id).blob, header)
    finally:
        backend.close()
    out = io.StringIO()
    assert main(["--store", f"sqlite://{db}", "verify"], out=out) == 1
    reported = {line.split()[1] for line in out.getvalue().splitlines() if line.startswith("CORRUPT")}
    assert {h.checkpoint_id for h in damaged} <= reported


# -- where values stay inline -------------------------------------------------------------------------
@pytest.mark.parametrize("setting", ["encrypted", "gzip", "file backend", "memory backend"])
def test_values_stay_inline_where_they_cannot_be_stored_apart(tmp_path: Path, setting: str) -> None:
    from spark_ckpt.codec import new_key

    config: dict = {
        "encrypted": {"encryption_keys": {"k1": new_key()}},
        "gzip": {"compression": "gzip"},
        "file backend": {"backend": "file"},
        "memory backend": {"backend": "memory"},
    }[setting]
    store = tmp_path / ("files" if setting == "file backend" else "c.db")
    graph = large_value_graphs.build(store, 6, **config)
    try:
        result = asyncio.run(graph.run({"go": 1}))
        assert result.content["n"] == 6
        final = graph.get_checkpoint()
        assert final.graph_state["blob"] == large_value_graphs.BLOB
        if setting != "memory backend":
            graph.close()
            graph = large_value_graphs.build(store, 6, **config)
            assert graph.get_checkpoint().graph_state == final.graph_state
    finally:
        graph.close()
    if setting in ("encrypted", "gzip"):
        assert _rows(store, "SELECT count(*) FROM [checkpoints:values]") == [(0,)]
        assert _rows(store, "SELECT count(*) FROM checkpoints WHERE length(blob) != size") == [(0,)]


def test_export_copies_records_whole(tmp_path: Path) -> None:
    from spark_ckpt.transfer import export_checkpoints

    db = tmp_path / "c.db"
    graph = large_value_graphs.build(db, 6)
    try:
        asyncio.run(graph.run({"go": 1}))
        final = graph.get_checkpoint()
    finally:
        graph.close()
    source, files = SqliteBackend(db), __import__("spark_ckpt.backends.file", fromlist=["FileBackend"]).FileBackend(
        tmp_path / "exported")
    try:
        assert export_checkpoints(source, files) == len(source.list())
        for header in source.list():
            assert files.get(header.checkpoint_id).blob == source.get(header.checkpoint_id).blob
    finally:
        source.close()
    again = large_value_graphs.build(tmp_path / "exported", 6, backend="file")
    try:
        assert again.get_checkpoint().graph_state == final.graph_state
    finally:
        again.close()


# -- processes killed ---------------------------------------------------------------------------------
@pytest.mark.parametrize("stall_at, delay_s", [(1, 0.0), (9, 0.02), (23, 0.0), (37, 0.05)])
def test_recovery_after_sigkill_is_exact(tmp_path: Path, stall_at: int, delay_s: float) -> None:
    db = tmp_path / "c.db"
    marker = tmp_path / "reached"
    kill_when_marked([sys.executable, str(WORKER), "run", str(db), str(STEPS), str(stall_at), str(marker)],
                     marker, delay_s)
    _consistent(db)
    graph = large_value_graphs.build(db, STEPS)
    try:
        result = asyncio.run(graph.recover_and_continue())
        _assert_same(graph, result, _reference(tmp_path))
    finally:
        graph.close()
    _consistent(db)


def _runs(db: Path, runs: int, keep: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), "runs", str(db), "4", str(runs), str(keep)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _reap(worker: subprocess.Popen, kill: tuple[int, float] | None = None) -> str:
    """Wait for ``worker`` to end; ``kill``: (runs, delay_s): SIGKILL it ``delay_s`` after it
    reported that many runs done."""
    try:
        if kill is not None:
            runs, delay_s = kill
            for _ in range(runs):
                assert worker.stdout.readline(), worker.stderr.read()[-2000:]
            time.sleep(delay_s)
            os.kill(worker.pid, signal.SIGKILL)
        out, err = worker.communicate(timeout=240)
        return out + err
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


@pytest.mark.parametrize("runs, delay_s", [(1, 0.0), (3, 0.002), (6, 0.004), (11, 0.007), (8, 0.015)])
def test_sigkill_at_any_time_during_runs_and_retention_loses_nothing(tmp_path: Path, runs: int, delay_s: float) -> None:
    """Killed at varied times while runs write whole records (the values they hold) and retention
    deletes old ones (and the values no record holds any more): the store stays consistent, every
    record reads back, and the interrupted execution, if any, recovers with the state it had."""
    db = tmp_path / "c.db"
    _reap(_runs(db, 60, 5), (runs, delay_s))
    _consistent(db)
    backend = SqliteBackend(db)
    unfinished = backend.executions(unfinished_only=True)
    backend.close()
    if unfinished:
        graph = large_value_graphs.build(db, 8)
        try:
            result = asyncio.run(graph.recover_and_continue())
            assert result.content["n"] >= 8
            assert graph.get_checkpoint().graph_state["blob"] == large_value_graphs.BLOB
        finally:
            graph.close()
        _consistent(db)


def test_two_workers_sharing_values_and_pruning_lose_nothing(tmp_path: Path) -> None:
    """Two processes write executions holding the same values and prune each other's old records at
    once; a third is killed among them. Every value a record holds is still there."""
    db = tmp_path / "c.db"
    _runs(db, 1, 5).communicate(timeout=240)  # the schema, before three processes open it at once
    workers = [_runs(db, 25, 4), _runs(db, 25, 4), _runs(db, 25, 4)]
    killed = _reap(workers[2], (4, 0.02))
    outputs = [_reap(worker, None) for worker in workers[:2]]
    for worker, output in zip(workers[:2], outputs):
        assert worker.returncode == 0, output[-2000:]
    del killed
    for record in _consistent(db):
        if not record.partial_state:
            assert record.graph_state["blob"] == large_value_graphs.BLOB


# -- found by review ---------------------------------------------------------------------------------
def test_threads_building_the_crc_tables_at_once_all_get_them_right() -> None:
    """The CRC continuation's tables are built on first use; threads doing that at once must not
    publish a table built twice over (every record they write would carry a wrong checksum)."""
    import threading

    from spark_ckpt.codec import crc_shift

    rng = random.Random(7)
    parts = [rng.randbytes(n) for n in (1, 1000, 65_537, 300_001)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(30):
            crc_shift._POWERS = None
            barrier, wrong = threading.Barrier(4), []

            def check(part: bytes) -> None:
                barrier.wait()
                if crc32_continued(zlib.crc32(b"head"), zlib.crc32(part), len(part)) != zlib.crc32(b"head" + part):
                    wrong.append(len(part))

            threads = [threading.Thread(target=check, args=(part,)) for part in parts]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert wrong == []
            assert all(crc32_continued(0, zlib.crc32(p), len(p)) == zlib.crc32(p) for p in parts)
    finally:
        sys.setswitchinterval(switch)


def test_a_damaged_stored_value_is_written_again_by_the_next_record_holding_it(tmp_path: Path) -> None:
    db = _stored_run(tmp_path, 4)
    (digest,) = _rows(db, "SELECT digest FROM [checkpoints:values] WHERE size >= ?", (MB,))[0]
    with _connected(db) as conn:
        (data,) = conn.execute("SELECT data FROM [checkpoints:values] WHERE digest = ?", (digest,)).fetchone()
        conn.execute("UPDATE [checkpoints:values] SET data = ? WHERE digest = ?",
                     (data[:5] + bytes([data[5] ^ 1]) + data[6:], digest))
    graph = large_value_graphs.build(db, 4)  # a new process's backend object: it checks what it reuses
    try:
        large_value_graphs.Settings.steps = 6
        asyncio.run(graph.run({"go": 1}))
    finally:
        graph.close()
    for record in _consistent(db):  # the new records, and the old ones, read back
        if not record.partial_state:
            assert record.graph_state["blob"] == large_value_graphs.BLOB


def _large_value_record(graph_id: str, execution_id: str, seq: int, text: str):
    """A header and bytes (as ``BlobParts`` with one value part) for a record holding ``text``."""
    from spark_ckpt.codec import Identity
    from spark_ckpt.engine.value_parts import part_of, placeholder
    from spark_ckpt.testing.conformance import make_header

    blob = Codec().encode_data_in_parts({"v": placeholder(0)}, Identity(graph_id, execution_id, seq), [part_of(text)])
    return make_header(seq, graph_id=graph_id, execution_id=execution_id, size=len(blob)), blob


@pytest.mark.parametrize("names", [
    ("graph_values",), ("archive_stored_values",), ("foo", "foo_values"), ("x", "x_stored_values"),
    ("x", "x_stored_value_refs_by_digest"), ("checkpoints", "checkpoints_values"),
    ("checkpoints", "checkpoints_value_refs"),
])
def test_stores_an_earlier_release_made_take_values_under_any_of_their_names(tmp_path: Path, names: tuple) -> None:
    """Stores made before values were stored once, under names that end like anything a values table
    could be called, side by side in one file: each is migrated and stores values of its own."""
    from contextlib import closing

    from sqlite_utils import Database

    from spark_ckpt.backends.sqlite import _migrations
    from spark_ckpt.backends.sqlite.schema import DEFAULT_TABLES, table_names

    db = tmp_path / "c.db"
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        for name in names:
            tables = DEFAULT_TABLES if name == "checkpoints" else table_names(
                name, default="checkpoints", legacy=DEFAULT_TABLES, backend="sqlite backend")
            _migrations(tables).apply(Database(conn), stop_before="m007_values_stored_once")
    backends = [SqliteBackend(db, table_name=name) for name in names]
    try:
        for i, backend in enumerate(backends):
            assert backend.applied_migrations()[-1] == "m007_values_stored_once"
            header, blob = _large_value_record("graph-a", f"e{i}", 0, str(i) * 100_000)
            backend.put(header, blob)
        for i, backend in enumerate(backends):
            (stored,) = backend.list()
            assert backend.get(stored.checkpoint_id).blob.endswith(b'"' + str(i).encode() * 100_000 + b'"}')
    finally:
        for backend in backends:
            backend.close()


def test_references_an_earlier_release_left_behind_are_swept(tmp_path: Path) -> None:
    """An earlier release deletes checkpoint rows without their references: ``scrub`` drops those
    references and the values only they held."""
    db = _stored_run(tmp_path, 4)
    backend = SqliteBackend(db)
    try:
        with _connected(db) as conn:  # as an earlier release deletes: the rows alone
            conn.execute("DELETE FROM checkpoints")
        backend.scrub()
        assert _rows(db, "SELECT count(*) FROM [checkpoints:value_refs]") == [(0,)]
        assert _rows(db, "SELECT count(*) FROM [checkpoints:values]") == [(0,)]
    finally:
        backend.close()


def test_a_checkpoint_stored_again_where_a_stale_reference_was_left_stores_its_own(tmp_path: Path) -> None:
    """An earlier release deleted the row alone; a checkpoint stored at that position again holds
    another value: its own reference replaces the stale one, and the value only that one held goes."""
    db = tmp_path / "c.db"
    backend = SqliteBackend(db)
    try:
        header, first = _large_value_record("graph-a", "e", 0, "z" * 100_000)
        backend.put(header, first)
        with _connected(db) as conn:  # as an earlier release deletes: the row alone
            conn.execute("DELETE FROM checkpoints")
        header, second = _large_value_record("graph-a", "e", 0, "w" * 100_000)
        backend.put(header, second)
        assert backend.get(header.checkpoint_id).blob == second.join()
        _bookkeeping_consistent(db)
        assert _rows(db, "SELECT count(*) FROM [checkpoints:values]") == [(1,)]
    finally:
        backend.close()


def test_export_without_verifying_copies_a_checkpoint_whose_value_is_missing(tmp_path: Path) -> None:
    from spark_ckpt.backends.memory import MemoryBackend
    from spark_ckpt.transfer import export_checkpoints

    db = _stored_run(tmp_path, 4)
    with _connected(db) as conn:
        conn.execute("DELETE FROM [checkpoints:values] WHERE size >= ?", (MB,))
    source, copy = SqliteBackend(db), MemoryBackend()
    try:
        assert export_checkpoints(source, copy, verify=False) == len(source.list())
        damaged = [h for h in copy.list() if h.size >= MB]
        assert damaged
        for header in damaged:
            with pytest.raises(CorruptCheckpointError):
                decode_record(Codec(), copy.get(header.checkpoint_id).blob, header)
    finally:
        source.close()


def test_a_record_retention_makes_stand_alone_keeps_its_values_apart(tmp_path: Path) -> None:
    from spark_ckpt.codec.values import identical
    from spark_ckpt.engine.records import RecordReader, rebase

    db = _stored_run(tmp_path, 12)
    backend = SqliteBackend(db)
    try:
        codec = Codec()
        target = next(h for h in sorted(backend.list(), key=lambda h: h.seq)
                      if h.seq > 5 and decode_record(codec, backend.get(h.checkpoint_id).blob, h).partial_state)
        before = RecordReader(backend, codec).whole(target)
        assert rebase(backend, codec, target) == target.seq
        after = decode_record(codec, backend.get(target.checkpoint_id).blob, target)
        assert not after.partial_state and identical(after.graph_state, before.graph_state)
        assert identical(after.node_states, before.node_states)
        assert [v.output for v in after.execution_history] == [v.output for v in before.execution_history]
        assert after.graph_state["blob"] == large_value_graphs.BLOB
        (stored, size), = _rows(db, "SELECT length(blob), size FROM checkpoints WHERE checkpoint_id = ?",
                                (target.checkpoint_id,))
        assert size >= MB and stored < 65536  # the values it holds are the ones stored already
        assert _rows(db, "SELECT count(*) FROM [checkpoints:values] WHERE size >= ?", (MB,)) == [(1,)]
        _consistent(db)
    finally:
        backend.close()


def test_a_value_found_damaged_in_a_transaction_that_failed_is_checked_again(tmp_path: Path) -> None:
    """A damaged value rewritten in a transaction that then failed (the disk full) is damaged again
    once rolled back: the backend object must not take it as checked."""
    from spark_ckpt.codec import Identity
    from spark_ckpt.engine.value_parts import part_of, placeholder
    from spark_ckpt.errors import BackendError
    from spark_ckpt.testing.conformance import make_header

    db = tmp_path / "c.db"
    header, blob = _large_value_record("graph-a", "e", 0, "d" * 100_000)
    with closing_backend(db) as backend:
        backend.put(header, blob)
    with _connected(db) as conn:
        conn.execute("UPDATE [checkpoints:values] SET data = zeroblob(size)")
    with closing_backend(db) as backend:  # (a new object: it has checked nothing yet)
        # room for rewriting the damaged 100 KB value, not for the 1 MB one stored with it
        (pages,) = backend._conn.execute("PRAGMA page_count").fetchone()
        backend._conn.execute(f"PRAGMA max_page_count = {pages + 60}")
        both = Codec().encode_data_in_parts({"a": placeholder(0), "b": placeholder(1)}, Identity("graph-a", "e", 1),
                                            [part_of("d" * 100_000), part_of("e" * MB)])
        with pytest.raises(BackendError):
            backend.put(make_header(1, execution_id="e", size=len(both)), both)
        backend._conn.execute("PRAGMA max_page_count = 1073741823")
        header, blob = _large_value_record("graph-a", "e", 2, "d" * 100_000)
        backend.put(header, blob)
        assert backend.get(header.checkpoint_id).blob == blob.join()
        _bookkeeping_consistent(db)


def closing_backend(db: Path):
    from contextlib import closing

    return closing(SqliteBackend(db))


def test_a_store_made_before_values_were_stored_once_opens_read_only(tmp_path: Path) -> None:
    """A read-only open cannot migrate; a store without the tables of values holds none, so it is
    read as it is (the CLI opens a store it cannot write read-only)."""
    from spark_ckpt.cli import main

    db = _stored_run(tmp_path, 4)
    with _connected(db) as conn:  # back to the schema of the release before
        conn.execute('DROP TABLE [checkpoints:values]')
        conn.execute('DROP TABLE [checkpoints:value_refs]')
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm007_values_stored_once'")
        conn.execute("UPDATE checkpoints SET blob = zeroblob(0)")  # (the rows held values: not readable here)
    backend = SqliteBackend(db, read_only=True)
    try:
        assert len(backend.list()) >= 8
        assert _rows(db, "SELECT count(*) FROM sqlite_master WHERE name LIKE '%:value%'") == [(0,)]
    finally:
        backend.close()
    out = io.StringIO()
    assert main(["--store", f"sqlite://{db}", "--read-only", "list"], out=out) == 0, out.getvalue()


def test_changed_values_stay_inline_in_changes_only_records_and_are_not_kept_in_memory(tmp_path: Path) -> None:
    """Only whole records store values apart: a value changed at a superstep is written inline in that
    superstep's record (hashing every version would cost more than sharing saves), and no part of a
    mutable value outlives the execution in the process-wide recent parts."""
    from spark_ckpt.engine import value_parts

    db = _stored_run(tmp_path, 12)
    records = _consistent(db)
    partial = [r.seq for r in records if r.partial_state]
    assert partial and _rows(db, "SELECT count(*) FROM checkpoints WHERE length(blob) < size AND seq IN (%s)"
                             % ",".join(map(str, partial))) == [(0,)]
    whole = len(records) - len(partial)
    assert _rows(db, "SELECT count(*) FROM [checkpoints:values]")[0][0] <= 3 * whole
    assert all(type(part.source) is str for part in value_parts._recent.entries.values())


# -- records written outside a run, and export ----------------------------------------------------------
def _large_rows(db: Path) -> list[tuple]:
    """(checkpoint id, bytes its row holds, size it reads back as) of each record holding a large value."""
    return _rows(db, "SELECT checkpoint_id, length(blob), size FROM checkpoints WHERE size >= ?", (MB,))


def test_records_written_outside_a_run_keep_values_apart(tmp_path: Path) -> None:
    """A manual checkpoint, a fork with an edited state and the run continuing that fork hold the
    values the run stored already: no row holds a large value, each record reads back exactly."""
    db = tmp_path / "c.db"
    graph = large_value_graphs.build(db, 4)
    try:
        asyncio.run(graph.run({"go": 1}))
        run = graph.get_checkpoint()
        manual = graph.create_checkpoint()
        assert manual.graph_state["blob"] == large_value_graphs.BLOB
        middle = next(h for h in graph.backend.list(execution_id=run.execution_id) if h.seq == 3)
        fork = graph.update_state(middle.checkpoint_id, {"note": "edited"})
        assert fork.graph_state["blob"] == large_value_graphs.BLOB and fork.graph_state["note"] == "edited"
        asyncio.run(graph.continue_from_checkpoint(fork.checkpoint_id))
        final = graph.get_checkpoint()
        assert final.execution_id == fork.execution_id and final.status == "completed"
        assert final.graph_state == {**run.graph_state, "note": "edited"}  # the rest as the run it forks
    finally:
        graph.close()
    rows = _large_rows(db)
    assert {manual.checkpoint_id, fork.checkpoint_id} <= {row[0] for row in rows}
    assert all(stored < 65536 for _, stored, _ in rows), rows
    assert _rows(db, "SELECT count(*) FROM [checkpoints:values] WHERE size >= ?", (MB,)) == [(1,)]
    records = {r.checkpoint_id: r for r in _consistent(db)}
    assert records[manual.checkpoint_id].graph_state == manual.graph_state
    assert records[fork.checkpoint_id].graph_state == fork.graph_state


@pytest.mark.parametrize("source_kind", ["sqlite", "file", "gzip"])
def test_export_into_sqlite_stores_values_once_and_reads_back_the_same_bytes(tmp_path: Path, source_kind: str) -> None:
    """Exported into a SQLite store, records hold the values apart (once for every record and run)
    and read back byte for byte as in the source; a second export skips them all. Compressed records
    are copied as they are (their values are not plain JSON in the bytes)."""
    from spark_ckpt.config import open_backend
    from spark_ckpt.transfer import export_checkpoints

    config = {"sqlite": {}, "file": {"backend": "file"}, "gzip": {"compression": "gzip"}}[source_kind]
    where = tmp_path / ("source" if source_kind == "file" else "source.db")
    graph = large_value_graphs.build(where, 4, **config)
    try:
        for _ in range(3):
            asyncio.run(graph.run({"go": 1}))
    finally:
        graph.close()
    source = open_backend(f"file://{where}" if source_kind == "file" else f"sqlite:///{where}")
    destination = SqliteBackend(tmp_path / "copy.db")
    try:
        headers = source.list()
        assert export_checkpoints(source, destination) == len(headers)
        for header in headers:
            assert destination.get(header.checkpoint_id).blob == source.get(header.checkpoint_id).blob
        assert export_checkpoints(source, destination) == 0  # identical ones already there
    finally:
        source.close()
        destination.close()
    copy = tmp_path / "copy.db"
    _consistent(copy)
    large = _rows(copy, "SELECT count(*) FROM [checkpoints:values] WHERE size >= ?", (MB,))[0][0]
    stored = _rows(copy, "SELECT sum(length(blob)) FROM checkpoints")[0][0]
    if source_kind == "gzip":
        assert large == 0
    else:
        assert large == 1 and stored < MB  # nine whole records read back as 1 MB and more each
        assert len(_large_rows(copy)) >= 9


def test_an_approval_resolved_in_the_store_keeps_values_apart(tmp_path: Path) -> None:
    """The record that resolves an approval holds the whole state: its large values stay apart, and
    the run passes the gate with them exactly."""
    import approval_graphs
    from spark.graphs import Graph

    from spark_ckpt import CheckpointConfig, checkpointed
    from spark.governance.approval import ApprovalPendingError

    db = tmp_path / "gate.db"
    gated = approval_graphs.gated()
    graph = checkpointed(
        Graph(start=gated.start, initial_state={"items": [], "blob": large_value_graphs.BLOB},
              policy_rules=[approval_graphs.GATE_RULE]),
        config=CheckpointConfig(backend=f"sqlite:///{db}"), graph_id="gated-large")
    try:
        with pytest.raises(ApprovalPendingError) as waiting:
            asyncio.run(graph.run({"n": 4}))
        before = {row[0] for row in _large_rows(db)}
        asyncio.run(graph.resolve_approval(waiting.value.approval.approval_id, approved=True, reviewer="r"))
        resolved = {row[0] for row in _large_rows(db)} - before
        assert len(resolved) == 1
        asyncio.run(graph.recover_and_continue())
        assert graph.get_checkpoint().status == "completed"
        assert graph.get_checkpoint().graph_state["blob"] == large_value_graphs.BLOB
    finally:
        graph.close()
    assert all(stored < 65536 for _, stored, _ in _large_rows(db))
    assert _rows(db, "SELECT count(*) FROM [checkpoints:values] WHERE size >= ?", (MB,)) == [(1,)]
    _consistent(db)


@pytest.mark.parametrize("after, delay_s", [(1, 0.0), (4, 0.003), (8, 0.0), (12, 0.01)])
def test_an_export_killed_part_way_leaves_a_consistent_store_the_next_export_completes(
        tmp_path: Path, after: int, delay_s: float) -> None:
    """SIGKILL at varied points of an export into SQLite: what was copied reads back whole and
    exact, nothing holds a value that is not there, and a second export copies the rest."""
    source = tmp_path / "source.db"
    graph = large_value_graphs.build(source, 4)
    try:
        for _ in range(3):
            asyncio.run(graph.run({"go": 1}))
    finally:
        graph.close()
    copy, marker = tmp_path / "copy.db", tmp_path / "marker"
    assert len(_rows(source, "SELECT seq FROM checkpoints")) > after
    kill_when_marked([sys.executable, str(WORKER), "export", str(source), str(copy), str(after), str(marker)],
                     marker, delay_s)
    _consistent(copy)
    from spark_ckpt.transfer import export_checkpoints

    src, dst = SqliteBackend(source), SqliteBackend(copy)
    try:
        copied_before = len(dst.list())
        assert copied_before >= after - 1
        assert export_checkpoints(src, dst) == len(src.list()) - copied_before
        for header in src.list():
            assert dst.get(header.checkpoint_id).blob == src.get(header.checkpoint_id).blob
    finally:
        src.close()
        dst.close()
    _consistent(copy)
    assert _rows(copy, "SELECT count(*) FROM [checkpoints:values] WHERE size >= ?", (MB,)) == [(1,)]

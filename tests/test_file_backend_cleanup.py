"""File backend housekeeping: empty execution directories and dead writers' temp files go away;
live writers, checkpoints and foreign files are never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from spark_ckpt.backends import file as file_backend
from spark_ckpt.backends.file import STALE_TEMP_AGE_S, FileBackend
from spark_ckpt.errors import CheckpointNotFoundError
from spark_ckpt.testing.conformance import make_header

# A writer killed in the middle of a put: its temp file is written, os.link never happens.
KILLED_WRITER = r"""
import os, sys, time
from spark_ckpt.backends.file import FileBackend
from spark_ckpt.testing.conformance import make_header

backend = FileBackend(sys.argv[1], fsync=False)
def hang(*args):
    print("writing", flush=True)
    time.sleep(60)
os.link = hang
backend.put(make_header(1), b"never published")
"""


@pytest.fixture
def backend(tmp_path):
    return FileBackend(tmp_path / "store", fsync=False)


def execution_dir(backend: FileBackend, graph_id: str = "graph-a", execution_id: str = "exec-1") -> Path:
    return Path(backend.root, "graphs", graph_id, execution_id)


def temp_files(backend: FileBackend) -> list[Path]:
    return sorted(p for p in Path(backend.root).rglob(".tmp-*"))


def make_temp(backend: FileBackend, directory: Path, *, age_s: float = 0.0) -> Path:
    """A temp file named exactly as a put of this process names it, ``age_s`` old."""
    path = Path(backend._write_temp(str(directory), b"half a checkp"))
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_deleting_the_last_checkpoint_removes_the_execution_and_graph_dirs(backend):
    backend.put(make_header(0), b"a")
    backend.put(make_header(1), b"b")
    backend.put(make_header(0, graph_id="graph-b", execution_id="exec-2"), b"c")
    backend.put(make_header(0, graph_id="graph-b", execution_id="exec-3"), b"d")
    directory = execution_dir(backend)

    assert backend.delete(["exec-1-0"]) == 1
    assert directory.is_dir()  # still holds seq 1
    assert backend.delete(["exec-1-1"]) == 1
    assert not directory.exists() and not directory.parent.exists()

    assert backend.delete(["exec-2-0"]) == 1
    assert not execution_dir(backend, "graph-b", "exec-2").exists()
    assert execution_dir(backend, "graph-b", "exec-3").is_dir()  # graph-b keeps its other execution
    assert Path(backend.root, "graphs").is_dir() and Path(backend.root, "spark-ckpt-store").is_file()
    assert [h.checkpoint_id for h in backend.list()] == ["exec-3-0"]
    assert [h.checkpoint_id for h in backend.executions()] == ["exec-3-0"]

    assert backend.delete(["exec-3-0"]) == 1
    assert list(Path(backend.root, "graphs").iterdir()) == []
    assert backend.list() == [] and backend.executions() == []


def test_a_put_after_its_directory_was_removed_still_works(backend, tmp_path):
    """In this process (cached directory) and in another backend instance that still believes the
    directory exists, as a writer in another process would."""
    other = FileBackend(tmp_path / "store", fsync=True)
    other.put(make_header(0), b"a")  # `other` now caches graph-a/exec-1 as existing
    assert backend.delete(["exec-1-0"]) == 1
    assert not execution_dir(backend).exists()

    backend.put(make_header(1), b"b")
    assert backend.delete(["exec-1-1"]) == 1
    assert not execution_dir(backend).parent.exists()
    other.put(make_header(2), b"c")
    assert other.get("exec-1-2").blob == b"c"
    assert [h.seq for h in backend.list()] == [2]
    assert temp_files(backend) == []


def test_a_put_racing_a_delete_that_removes_its_directory_succeeds(backend, tmp_path, monkeypatch):
    """The directory vanishes right between the writer's directory check and its temp file, twice:
    once by a delete() of another backend, once with its graph directory by hand."""
    writer = FileBackend(tmp_path / "store", fsync=True)
    writer.put(make_header(0), b"a")
    real_write_temp = writer._write_temp
    calls = []

    def write_temp_after_a_delete(directory, data):
        if directory == writer._heads:  # a new head file of the executions index, written after the put
            return real_write_temp(directory, data)
        calls.append(directory)
        if len(calls) == 1:
            assert backend.delete(["exec-1-0"]) == 1
            assert not os.path.exists(directory)
        elif len(calls) == 2:
            os.rmdir(directory)
            os.rmdir(os.path.dirname(directory))
        return real_write_temp(directory, data)

    monkeypatch.setattr(writer, "_write_temp", write_temp_after_a_delete)
    writer.put(make_header(1), b"b")
    assert len(calls) == 3
    assert writer.get("exec-1-1").blob == b"b"
    assert [h.seq for h in backend.list()] == [1]


def test_a_writer_killed_mid_put_leaves_a_temp_file_that_cleanup_removes(backend, tmp_path):
    backend.put(make_header(0), b"a")
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path / "store")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "writing\n"
        [temp] = temp_files(backend)
        assert temp.parent == execution_dir(backend) and f"-{child.pid}-" in temp.name

        assert backend.cleanup() == 0  # its writer is alive: the temp file stays
        assert temp.exists()
        # Readers ignore it, and the half-done put's id is absent.
        assert [h.seq for h in backend.list()] == [0]
        with pytest.raises(CheckpointNotFoundError):
            backend.get("exec-1-1")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()

    assert backend.cleanup() == 1  # the same host's writer is dead: removed without waiting
    assert temp_files(backend) == []
    assert [h.seq for h in backend.list()] == [0]
    backend.put(make_header(1), b"b")  # the dangling id link of the killed put is taken over
    assert backend.get("exec-1-1").blob == b"b"


def test_cleanup_removes_old_temp_files_and_keeps_fresh_ones(backend):
    backend.put(make_header(0), b"a")
    directory = execution_dir(backend)
    fresh = make_temp(backend, directory)  # this process is alive: only age can make it stale
    old = make_temp(backend, directory, age_s=STALE_TEMP_AGE_S + 60)
    dead_writer = directory / f".tmp-{file_backend._HOST_TAG}-{dead_pid()}-abcd_123.part"
    dead_writer.write_bytes(b"x")
    other_host = directory / f".tmp-00000000-{dead_pid()}-abcd_123.part"  # a dead pid elsewhere means nothing
    other_host.write_bytes(b"x")
    no_pid = directory / ".tmp-k2j4h5g6.part"  # the name older versions wrote
    no_pid.write_bytes(b"x")
    old_no_pid = directory / ".tmp-a1b2c3d4.part"
    old_no_pid.write_bytes(b"x")
    os.utime(old_no_pid, (time.time() - STALE_TEMP_AGE_S - 60,) * 2)
    in_leases = make_temp(backend, Path(backend.root, "leases"), age_s=STALE_TEMP_AGE_S + 60)
    in_root = make_temp(backend, Path(backend.root), age_s=STALE_TEMP_AGE_S + 60)

    assert backend.cleanup() == 5
    assert sorted(temp_files(backend)) == sorted([fresh, other_host, no_pid])
    assert [h.seq for h in backend.list()] == [0]
    assert backend.get("exec-1-0").blob == b"a"
    assert not old.exists() and not dead_writer.exists() and not in_leases.exists() and not in_root.exists()
    assert backend.cleanup(max_temp_age_s=-1) == 3


def test_delete_removes_stale_temp_files_but_a_live_writers_keeps_the_directory(backend):
    backend.put(make_header(0), b"a")
    backend.put(make_header(0, execution_id="exec-2"), b"b")
    directory, other = execution_dir(backend), execution_dir(backend, execution_id="exec-2")
    make_temp(backend, directory, age_s=STALE_TEMP_AGE_S + 60)
    untouched = make_temp(backend, other, age_s=STALE_TEMP_AGE_S + 60)  # delete only tidies what it touched
    live = make_temp(backend, directory)

    assert backend.delete(["exec-1-0"]) == 1
    assert temp_files(backend) == sorted([live, untouched])
    assert directory.is_dir()  # a writer is still busy in it
    os.unlink(live)
    assert backend.cleanup() == 1
    assert not directory.exists()
    assert [h.checkpoint_id for h in backend.list()] == ["exec-2-0"]


def test_foreign_files_are_never_deleted_and_keep_their_directory(backend):
    backend.put(make_header(0), b"a")
    directory = execution_dir(backend)
    foreign = [
        directory / ".tmp-crashed.part",
        directory / ".tmp-abcdefgh.part.bak",
        directory / "000000000001.ckpt.part",
        directory / "notes.txt",
    ]
    for path in foreign:
        path.write_bytes(b"mine")
        os.utime(path, (0, 0))
    (directory / ".tmp-abcdefgh.part").mkdir()  # right name, but a directory
    os.symlink("notes.txt", directory / ".tmp-zyxwvuts.part")  # right name, but a symlink

    assert backend.delete(["exec-1-0"]) == 1
    assert backend.cleanup(max_temp_age_s=-1) == 0
    assert all(path.exists() for path in foreign)
    assert (directory / ".tmp-abcdefgh.part").is_dir() and os.path.islink(directory / ".tmp-zyxwvuts.part")
    assert backend.list() == []


def test_cleanup_removes_empty_execution_dirs_left_by_earlier_versions(backend):
    backend.put(make_header(0), b"a")
    empty = Path(backend.root, "graphs", "graph-old", "exec-old")
    empty.mkdir(parents=True)
    assert backend.cleanup() == 0
    assert not empty.parent.exists()
    assert execution_dir(backend).is_dir()


def test_put_names_its_temp_files_as_cleanup_expects(backend):
    """The cleanup pattern matches what put really writes (a mismatch would leak temp files forever)."""
    directory = tempfile.mkdtemp(dir=backend.root)
    path = backend._write_temp(directory, b"x")
    assert file_backend._TEMP_NAME.match(os.path.basename(path))
    assert f"-{os.getpid()}-" in path


def test_an_id_link_left_by_a_refused_duplicate_never_reaches_the_other_checkpoint(backend):
    """A put refused as a duplicate seq claims its id first; if it died before taking the claim back,
    its id link points at the other checkpoint's file. That id is then absent (get), deleting it
    leaves the other checkpoint alone, and a later put can take the id."""
    backend.put(make_header(0, checkpoint_id="owner"), b"kept")
    owner_link = Path(backend._id_link("owner"))
    stray = Path(backend._id_link("stray"))
    os.symlink(os.readlink(owner_link), stray)  # what the dead put left
    with pytest.raises(CheckpointNotFoundError):
        backend.get("stray")
    assert backend.delete(["stray"]) == 0
    assert backend.get("owner").blob == b"kept"
    backend.put(make_header(1, checkpoint_id="stray"), b"new")
    assert backend.get("stray").blob == b"new" and backend.get("owner").blob == b"kept"


def test_a_duplicate_seq_is_refused_before_its_id_is_claimed(backend):
    backend.put(make_header(0, checkpoint_id="first"), b"one")
    with pytest.raises(file_backend.DuplicateCheckpointError):
        backend.put(make_header(0, checkpoint_id="second"), b"two")
    assert not os.path.lexists(backend._id_link("second"))
    assert backend.get("first").blob == b"one"

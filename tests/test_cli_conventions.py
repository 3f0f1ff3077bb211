"""The ``spark-ckpt`` command line's conventions, through real processes: pipes closed early, runs
with and without a terminal (a real pseudo-terminal), colour rules, options on either side of the
command, ``--version``, ``--json`` on every command, read-only stores and saved ``.ckpt`` files, and
``prune``'s plan and confirmation."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spark_ckpt.cli import build_parser, main
from spark_ckpt.codec import Identity
from spark_ckpt.config import CheckpointConfig, open_backend
from spark_ckpt.errors import BackendError
from spark_ckpt.model import COMPLETED, RUNNING, GraphCheckpoint, GraphMetadata, NodeSnapshot, Visit

REPO = Path(__file__).resolve().parents[1]
ANSI = "\x1b["
EXECUTIONS, PER_EXECUTION = 40, 20  # 800 checkpoints: `list --json` is far larger than a pipe's buffer


def _record(execution: str, seq: int, created_at: float, status: str = RUNNING) -> GraphCheckpoint:
    return GraphCheckpoint(
        checkpoint_id=f"ck-{execution}-{seq}", seq=seq, timestamp=created_at,
        graph_metadata=GraphMetadata("etl", "v1", execution), status=status, superstep=seq,
        graph_state={"counter": seq, "note": "[bold]not markup[/bold]"},
        node_states={"step": NodeSnapshot(process_count=seq)},
        current_node="step", execution_history=[Visit("step", i, i, {"content": i}) for i in range(seq)],
    )


@pytest.fixture
def store(tmp_path: Path, no_env_config) -> dict:
    """A SQLite store of 40 completed executions of 20 checkpoints each, two days old."""
    path = tmp_path / "store.db"
    backend = open_backend(f"sqlite:///{path}")
    codec = CheckpointConfig().make_codec()
    start = time.time() - 2 * 86400
    for e in range(EXECUTIONS):
        for seq in range(PER_EXECUTION):
            record = _record(f"e{e:02d}", seq, start + e * 100 + seq, COMPLETED if seq == PER_EXECUTION - 1 else RUNNING)
            blob = codec.encode(record, Identity(record.graph_id, record.execution_id, record.seq))
            backend.put(record.header(size=len(blob)), blob)
    backend.close()
    return {"url": f"sqlite:///{path}", "path": path, "count": EXECUTIONS * PER_EXECUTION}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["PYTHONWARNINGS"] = "ignore"
    return {**env, **extra}


def cli(*argv: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """``spark-ckpt argv`` in a child process, stdout and stderr piped (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "spark_ckpt.cli", *argv], capture_output=True, text=True,
                          input=input if input is not None else "", env=_env(**env), timeout=120)


def in_terminal(*argv: str, answer: str | None = None, **env: str) -> tuple[int, str]:
    """``spark-ckpt argv`` with stdin, stdout and stderr on a real pseudo-terminal; what it printed
    there (``answer``: typed once it asks)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "spark_ckpt.cli", *argv], stdin=slave, stdout=slave,
                            stderr=slave, env=_env(TERM="xterm-256color", COLUMNS="200", **env), close_fds=True)
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                raise AssertionError(f"no output from the child for 60 s; so far {seen!r}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # (EIO: the child closed the terminal)
                break
            if not chunk:
                break
            seen += chunk
            if answer is not None and b"[y/N]" in seen:
                os.write(master, answer.encode() + b"\n")
                answer = None
    finally:
        os.close(master)
        code = proc.wait(timeout=60)
    return code, seen.decode(errors="replace")


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _ids(url: str) -> set[str]:
    return {row["id"] for row in json.loads(cli("--store", url, "list", "--json").stdout)}


# -- closed pipes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["stats", "--json"], ["verify"]])
def test_a_pipe_closed_early_ends_the_command_quietly(store, argv):
    """`spark-ckpt list | head -1`: the reader takes one line and goes away; no traceback, no
    "Exception ignored" at exit. (Whether the rest still fit in the pipe is the kernel's business:
    0 or the exit code a shell gives a command stopped by SIGPIPE.)"""
    proc = subprocess.Popen([sys.executable, "-m", "spark_ckpt.cli", "--store", store["url"], *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    first = proc.stdout.readline()
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert first.strip()
    assert err == ""
    assert code in (0, 141)


@pytest.mark.parametrize("argv", [["list"], ["show", "ck-e00-19"], ["list", "--executions", "--json"]])
def test_a_reader_gone_before_any_output_ends_the_command_with_141(store, argv):
    """The reader closes before the command prints anything: its first write fails; it stops with
    141 and says nothing."""
    proc = subprocess.Popen([sys.executable, "-m", "spark_ckpt.cli", "--store", store["url"], *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""


def test_show_into_a_closed_pipe_is_quiet(store, tmp_path):
    shell = subprocess.run(
        f"'{sys.executable}' -m spark_ckpt.cli --store '{store['url']}' show ck-e00-19 | head -1",
        shell=True, capture_output=True, text=True, env=_env(), timeout=60,
    )
    assert shell.stdout == "checkpoint   ck-e00-19\n"
    assert "Traceback" not in shell.stderr and "Exception ignored" not in shell.stderr


# -- terminals, pipes and colour ----------------------------------------------------------------------
def test_a_run_without_a_terminal_prints_plain_lines_and_progress_per_tenth(store, tmp_path):
    """In a pipe or a log: no colour codes, no carriage returns, no trailing blanks, and the progress
    of a long command as a line per tenth of the work (not one line kilobytes long)."""
    listing = cli("--store", store["url"], "list", "--executions")
    assert listing.returncode == 0
    assert ANSI not in listing.stdout and "\r" not in listing.stdout
    assert all(line == line.rstrip() for line in listing.stdout.splitlines())
    copy = cli("--store", store["url"], "export", "--to", f"sqlite:///{tmp_path / 'copy.db'}")
    assert copy.returncode == 0, copy.stderr
    assert ANSI not in copy.stderr + copy.stdout and "\r" not in copy.stderr + copy.stdout
    progress = copy.stderr.splitlines()
    assert progress[-1] == f"exporting: {store['count']}/{store['count']}"
    assert len(progress) == 10 and all(len(line) < 40 for line in progress)


def test_a_terminal_gets_colour_and_a_live_progress_bar(store, tmp_path):
    code, shown = in_terminal("--store", store["url"], "list", "--executions")
    assert code == 0 and ANSI in shown  # bold headings, coloured statuses
    assert "completed" in shown
    code, shown = in_terminal("--store", store["url"], "export", "--to", f"sqlite:///{tmp_path / 'copy.db'}")
    assert code == 0
    assert "exporting" in shown and f"{store['count']}/{store['count']}" in shown
    assert "━" in shown and "\x1b[?25l" in shown  # a drawn bar, redrawn in place with the cursor hidden
    assert "exporting: 80/800" not in shown  # not the log lines


def test_no_color_and_the_color_option(store):
    code, shown = in_terminal("--store", store["url"], "list", "--executions", NO_COLOR="1")
    assert code == 0 and "completed" in shown and ANSI not in shown
    code, shown = in_terminal("--store", store["url"], "list", "--executions", "--no-color")
    assert code == 0 and "completed" in shown and ANSI not in shown
    forced = cli("--store", store["url"], "list", "--executions", "--color", "always", NO_COLOR="1")
    assert forced.returncode == 0 and ANSI in forced.stdout  # an explicit choice wins over NO_COLOR


def test_stored_text_is_never_read_as_markup(store):
    proc = cli("--store", store["url"], "show", "ck-e00-3", "--color", "always")
    assert proc.returncode == 0 and "[bold]not markup[/bold]" in proc.stdout


# -- options, version, --json --------------------------------------------------------------------------
def test_global_options_are_accepted_before_or_after_the_command(store):
    before = cli("--store", store["url"], "--json", "list", "--limit", "3")
    after = cli("list", "--limit", "3", "--store", store["url"], "--json")
    assert before.returncode == after.returncode == 0, after.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout) and len(json.loads(after.stdout)) == 3
    # given on both sides, the one after the command wins; left out after it, the one before stays
    code, out = _run_inline("--store", "sqlite:///nowhere.db", "list", "--store", store["url"], "--json")
    assert code == 0 and len(json.loads(out)) == store["count"]
    nested = cli("approvals", "list", "--store", store["url"], "--json")
    assert nested.returncode == 0 and json.loads(nested.stdout) == []


def _run_inline(*argv: str) -> tuple[int, str]:
    import io

    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_version_names_spark_ckpt_and_spark():
    from importlib import metadata

    import spark_ckpt

    proc = cli("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"spark-ckpt {spark_ckpt.__version__} (spark {metadata.version('spark')})\n"


def _commands(parser) -> dict[str, object]:
    """Every runnable (sub)command's parser, by its full name."""
    import argparse

    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                children = _commands(sub)
                found.update({f"{name} {k}": v for k, v in children.items()} if children else {name: sub})
    return found


def test_every_command_takes_json():
    commands = _commands(build_parser())
    assert {"list", "show", "stats", "verify", "prune", "approvals list", "approvals approve", "demo"} <= set(commands)
    for name, parser in commands.items():
        assert "--json" in parser._option_string_actions, name


def test_verify_and_prune_report_as_json(store):
    verify = cli("--store", store["url"], "verify", "--json")
    assert verify.returncode == 0
    assert json.loads(verify.stdout) == {"checked": store["count"], "corrupt": 0, "incomplete": 0, "missing": 0,
                                         "unreadable": 0, "problems": []}
    demo = cli("demo", "--json")
    assert demo.returncode == 2 and demo.stderr.startswith("spark-ckpt: error: demo has no --json output")


# -- prune: a plan, then a confirmation ----------------------------------------------------------------
def test_prune_dry_run_is_a_table_per_execution_not_every_id(store):
    before = _digest(store["path"])
    proc = cli("--store", store["url"], "prune", "--keep", "20", "--dry-run")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["graph", "execution", "checkpoints", "bytes", "oldest", "newest"]
    assert len(lines) == 1 + EXECUTIONS - 1 + 1  # heading, one row per execution losing checkpoints, summary
    assert lines[-1].startswith(f"would delete {store['count'] - 20} checkpoint(s), ")
    assert "ck-" not in proc.stdout
    assert _digest(store["path"]) == before


def test_prune_without_a_terminal_needs_yes(store):
    refused = cli("--store", store["url"], "prune", "--keep", "20")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "--yes" in refused.stderr
    assert len(_ids(store["url"])) == store["count"]
    done = cli("--store", store["url"], "prune", "--keep", "20", "--yes")
    assert done.returncode == 0 and done.stdout.startswith(f"deleted {store['count'] - 20} checkpoint(s)")
    assert len(_ids(store["url"])) == 20


def test_prune_in_a_terminal_asks_first(store):
    code, shown = in_terminal("--store", store["url"], "prune", "--keep", "20", answer="n")
    assert code == 1 and "[y/N]" in shown and "nothing deleted" in shown and "e00" in shown
    assert len(_ids(store["url"])) == store["count"]
    code, shown = in_terminal("--store", store["url"], "prune", "--keep", "20", answer="y")
    assert code == 0 and f"deleted {store['count'] - 20} checkpoint(s)" in shown
    assert len(_ids(store["url"])) == 20


# -- read-only stores ---------------------------------------------------------------------------------
def test_read_only_option_reads_and_refuses_writes_without_changing_the_file(store):
    before = _digest(store["path"])
    listing = cli("--store", store["url"], "--read-only", "list", "--executions", "--json")
    assert listing.returncode == 0 and len(json.loads(listing.stdout)) == EXECUTIONS
    assert cli("--read-only", "--store", store["url"], "verify").returncode == 0
    refused = cli("--read-only", "--store", store["url"], "prune", "--keep", "1", "--yes")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "read-only" in refused.stderr and "Traceback" not in refused.stderr
    assert _digest(store["path"]) == before
    assert len(_ids(store["url"])) == store["count"]


def test_a_store_this_process_cannot_write_is_read_as_it_is(store, monkeypatch):
    """Inspecting a store on a read-only file system: nothing is created beside it (no -wal, no
    -shm), nothing migrated, the file unchanged. (Root may write anywhere, so the lack of permission
    is what os.access reports here; the test below uses real permissions when not root.)"""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: mode != os.W_OK and real_access(path, mode, **kw))
    before = _digest(store["path"])
    code, out = _run_inline("--store", store["url"], "list", "--executions", "--json")
    assert code == 0 and len(json.loads(out)) == EXECUTIONS
    assert _run_inline("--store", store["url"], "verify")[0] == 0
    assert sorted(p.name for p in store["path"].parent.iterdir()) == ["store.db"]
    assert _digest(store["path"]) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_store_without_write_permission_can_be_inspected(store):
    directory = store["path"].parent
    store["path"].chmod(0o444)
    directory.chmod(0o555)
    try:
        listing = cli("--store", store["url"], "list", "--executions", "--json")
        assert listing.returncode == 0 and len(json.loads(listing.stdout)) == EXECUTIONS
        refused = cli("--store", store["url"], "prune", "--keep", "1", "--yes")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    finally:
        directory.chmod(0o755)
        store["path"].chmod(0o644)


def test_read_only_sqlite_refuses_a_schema_it_would_have_to_change(tmp_path, no_env_config):
    import sqlite3

    from sqlite_utils import Database

    from spark_ckpt.backends.sqlite import SQLiteBackend, _migrations

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    _migrations().apply(Database(conn), stop_before="m006_executions_index_heads")  # an older store
    conn.close()
    before = _digest(path)
    with pytest.raises(BackendError, match="m006_executions_index_heads.*read-only open cannot make"):
        SQLiteBackend(path, read_only=True)
    assert _digest(path) == before
    with pytest.raises(BackendError, match="no sqlite checkpoint database"):
        SQLiteBackend(tmp_path / "absent.db", read_only=True)
    assert not (tmp_path / "absent.db").exists()


def test_read_only_file_store(tmp_path, no_env_config):
    from spark_ckpt.backends.file import FileBackend

    root = tmp_path / "files"
    writer = FileBackend(root)
    record = _record("e1", 0, time.time())
    codec = CheckpointConfig().make_codec()
    blob = codec.encode(record, Identity("etl", "e1", 0))
    writer.put(record.header(size=len(blob)), blob)
    writer.close()
    listing = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    reader = FileBackend(root, read_only=True)
    assert [h.checkpoint_id for h in reader.list()] == ["ck-e1-0"]
    assert reader.get("ck-e1-0").blob == blob
    for write in (lambda: reader.put(record.header(size=len(blob)), blob), lambda: reader.delete(["ck-e1-0"]),
                  lambda: reader.acquire_lease("e1", "me", 10), reader.cleanup):
        with pytest.raises(BackendError, match="read-only"):
            write()
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == listing
    with pytest.raises(BackendError, match="not a spark-ckpt file store"):
        FileBackend(tmp_path / "nothing-here", read_only=True)
    assert not (tmp_path / "nothing-here").exists()


# -- saved .ckpt files ----------------------------------------------------------------------------------
def test_show_reads_a_saved_checkpoint_file_without_a_store(tmp_path, no_env_config):
    import asyncio

    import graphs
    from spark_ckpt import checkpointed

    url = f"sqlite:///{tmp_path}/changes.db"
    graph = checkpointed(graphs.mutating(), config=CheckpointConfig(backend=url), graph_id="changes")
    asyncio.run(graph.run({}))
    saved = graph.save_checkpoint(tmp_path / "saved.ckpt")
    graph.close()
    os.unlink(tmp_path / "changes.db")  # no store at all: the file stands alone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "spark_ckpt.cli", "show", str(saved)], capture_output=True,
                          text=True, env=_env(), cwd=elsewhere, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "graph        changes" in proc.stdout and "changed since the previous" not in proc.stdout
    as_json = json.loads(cli("show", str(saved), "--json").stdout)
    assert as_json["header"]["graph"] == "changes" and as_json["checkpoint"]["graph_state"]
    assert list(elsewhere.iterdir()) == []  # no store was created where it ran
    missing = cli("show", str(tmp_path / "absent.ckpt"))
    assert missing.returncode == 2 and "cannot read checkpoint file" in missing.stderr
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(saved.read_bytes()[:-7] + b"garbage")
    bad = cli("show", str(damaged))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr

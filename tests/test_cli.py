"""The ``spark-ckpt`` command line, against a real SQLite store filled through the backend and codec."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from spark_ckpt.cli import main
from spark_ckpt.codec import Identity, from_data, to_data
from spark_ckpt.config import CheckpointConfig, open_backend
from spark_ckpt.model import (
    COMPLETED, FAILED, RUNNING, FailureInfo, GraphCheckpoint, GraphMetadata, NodeSnapshot, Visit,
)

NOW = time.time()


def _checkpoint(graph: str, execution: str, seq: int, created_at: float, status: str = RUNNING, **extra) -> GraphCheckpoint:
    return GraphCheckpoint(
        checkpoint_id=f"ck-{execution}-{seq}",
        seq=seq,
        timestamp=created_at,
        graph_metadata=GraphMetadata(graph, "v1", execution),
        status=status,
        superstep=seq,
        graph_state={"counter": seq, "rows": [{"id": i, "name": f"row {i}"} for i in range(40)]},
        node_states={
            "fetch": NodeSnapshot(process_count=1, outputs={"content": {"n": 40}}),
            "transform": NodeSnapshot(process_count=seq, pending_inputs=[{"content": "next"}]),
        },
        current_node="transform",
        execution_history=[Visit("fetch", 0, 0, {"content": {"n": 40}})]
        + [Visit("transform", i, i + 1, {"content": i}) for i in range(seq)],
        **extra,
    )


@pytest.fixture
def store(tmp_path: Path, no_env_config) -> dict:
    """A SQLite store: graph etl (a completed and a failed execution), graph other (one running)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    backend = open_backend(url)
    codec = CheckpointConfig().make_codec()
    day = 86400
    records = [
        # etl / e-old: three checkpoints two days ago, completed
        _checkpoint("etl", "e-old", 0, NOW - 2 * day),
        _checkpoint("etl", "e-old", 1, NOW - 2 * day + 1),
        _checkpoint("etl", "e-old", 2, NOW - 2 * day + 2, COMPLETED, result={"content": "done"}),
        # etl / e-new: two checkpoints an hour ago, the last one failed (unfinished: protected)
        _checkpoint("etl", "e-new", 0, NOW - 3600),
        _checkpoint("etl", "e-new", 1, NOW - 3600 + 1, FAILED, failure=FailureInfo(
            node_key="transform", index=1, error_type="ValueError", error="bad row 7",
            input={"content": "row 7"})),
        # other / e-other: one running checkpoint, a minute ago
        _checkpoint("other", "e-other", 0, NOW - 60),
    ]
    for record in records:
        blob = codec.encode(record, Identity(record.graph_id, record.execution_id, record.seq))
        backend.put(record.header(size=len(blob)), blob)
    backend.close()
    return {"url": url, "path": tmp_path / "store.db", "records": {r.checkpoint_id: r for r in records}}


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def _corrupt(path: Path, checkpoint_id: str, change) -> None:
    conn = sqlite3.connect(path)
    (blob,) = conn.execute("SELECT blob FROM checkpoints WHERE checkpoint_id = ?", (checkpoint_id,)).fetchone()
    conn.execute("UPDATE checkpoints SET blob = ? WHERE checkpoint_id = ?", (change(bytes(blob)), checkpoint_id))
    conn.commit()
    conn.close()


# -- list --------------------------------------------------------------------------------------------
def test_list_shows_every_checkpoint_newest_first(store):
    """`list` prints one row per checkpoint, newest first, with its header fields."""
    code, out = run("--store", store["url"], "list")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["id", "graph", "execution", "seq", "status", "size", "created_at"]
    ids = [line.split()[0] for line in lines[1:]]
    expected = sorted(store["records"].values(), key=lambda r: r.timestamp, reverse=True)
    assert ids == [r.checkpoint_id for r in expected]
    failed_row = next(line for line in lines if line.startswith("ck-e-new-1 "))
    assert failed_row.split()[1:5] == ["etl", "e-new", "1", "failed"]


def test_list_filters_limit_and_json(store):
    """--graph/--execution/--limit filter; --json gives the same headers as data with local ISO times."""
    code, out = run("--store", store["url"], "list", "--graph", "etl", "--limit", "2", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["id"] for r in rows] == ["ck-e-new-1", "ck-e-new-0"]
    assert {r["graph"] for r in rows} == {"etl"}
    created = store["records"]["ck-e-new-1"].timestamp
    from datetime import datetime

    assert datetime.fromisoformat(rows[0]["created_at"]).timestamp() == pytest.approx(created, abs=1)
    assert rows[0]["size"] > 0

    code, out = run("--store", store["url"], "list", "--execution", "e-old", "--json")
    assert [r["seq"] for r in json.loads(out)] == [2, 1, 0]


def test_list_executions_shows_status_per_execution(store):
    """--executions prints one line per execution with the status of its newest checkpoint."""
    code, out = run("--store", store["url"], "list", "--executions", "--json")
    assert code == 0
    status = {r["execution"]: (r["graph"], r["status"], r["last_seq"]) for r in json.loads(out)}
    assert status == {
        "e-old": ("etl", "completed", 2), "e-new": ("etl", "failed", 1), "e-other": ("other", "running", 0),
    }
    code, table = run("--store", store["url"], "list", "--executions", "--graph", "etl")
    assert [line.split()[0] for line in table.strip().splitlines()[1:]] == ["e-new", "e-old"]


def test_list_uses_the_store_from_the_environment(store, monkeypatch):
    """Without --store, SPARK_CKPT_STORE names the store."""
    monkeypatch.setenv("SPARK_CKPT_STORE", store["url"])
    code, out = run("list", "--graph", "other")
    assert code == 0 and "ck-e-other-0" in out


# -- show --------------------------------------------------------------------------------------------
def test_show_prints_a_readable_summary(store):
    """`show` decodes a checkpoint: ids, state keys with previews, node states, history, failure."""
    code, out = run("--store", store["url"], "show", "ck-e-new-1")
    assert code == 0
    assert "graph        etl (version v1)" in out
    assert "execution    e-new" in out
    assert "status failed" in out
    assert "  counter: 1" in out
    rows_line = next(line for line in out.splitlines() if line.startswith("  rows: "))
    assert rows_line.endswith("...") and len(rows_line) < 100  # a preview, not the whole value
    node_section = out.split("node states", 1)[1].split("execution history", 1)[0]
    transform_row = next(line.split() for line in node_section.splitlines() if line.startswith("  transform "))
    assert transform_row[1:3] == ["1", "1"]  # process count, pending inputs
    assert "execution history (2 visits" in out
    assert "failure      transform visit 1: ValueError: bad row 7" in out
    assert '"row 7"' in out


def test_show_json_round_trips_to_the_stored_record(store):
    """`show --json` prints the decoded checkpoint, equal to what was stored."""
    code, out = run("--store", store["url"], "show", "ck-e-old-2", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["header"]["status"] == "completed"
    assert from_data(data["checkpoint"], GraphCheckpoint) == store["records"]["ck-e-old-2"]
    assert data["checkpoint"] == json.loads(json.dumps(to_data(store["records"]["ck-e-old-2"])))


def test_show_unknown_checkpoint_is_a_clear_error(store, capsys):
    """An unknown id exits 2 with one error line naming it, and no traceback."""
    code, out = run("--store", store["url"], "show", "ck-does-not-exist")
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    assert err.startswith("spark-ckpt: error: ") and "ck-does-not-exist" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# -- verify ------------------------------------------------------------------------------------------
def test_verify_passes_on_an_intact_store(store):
    """`verify` decodes every checkpoint and exits 0 when all are intact."""
    code, out = run("--store", store["url"], "verify")
    assert code == 0
    assert out.strip().splitlines()[-1] == f"{len(store['records'])} checked, 0 corrupt"


def test_verify_reports_each_corrupt_checkpoint_and_exits_1(store):
    """A flipped byte, a truncated blob and a blob swapped onto another checkpoint are each reported."""
    flip = lambda blob: blob[:-5] + bytes([blob[-5] ^ 0x01]) + blob[-4:]  # noqa: E731
    _corrupt(store["path"], "ck-e-old-0", flip)
    _corrupt(store["path"], "ck-e-old-1", lambda blob: blob[: len(blob) // 2])
    conn = sqlite3.connect(store["path"])
    (other,) = conn.execute("SELECT blob FROM checkpoints WHERE checkpoint_id = 'ck-e-other-0'").fetchone()
    conn.close()
    _corrupt(store["path"], "ck-e-new-0", lambda _: bytes(other))

    code, out = run("--store", store["url"], "verify")
    assert code == 1
    lines = out.strip().splitlines()
    reported = {line.split()[1]: line for line in lines if line.startswith("CORRUPT")}
    assert set(reported) == {"ck-e-old-0", "ck-e-old-1", "ck-e-new-0"}
    assert "checksum" in reported["ck-e-old-0"]
    assert "e-other" in reported["ck-e-new-0"]  # says whose checkpoint it really is
    assert lines[-1] == f"{len(store['records'])} checked, 3 corrupt"

    code, out = run("--store", store["url"], "verify", "--graph", "other")
    assert code == 0 and out.strip() == "1 checked, 0 corrupt"


# -- prune -------------------------------------------------------------------------------------------
def _ids(url: str) -> set[str]:
    return {r["id"] for r in json.loads(run("--store", url, "list", "--json")[1])}


def test_prune_dry_run_deletes_nothing(store):
    """--dry-run lists what --keep would delete and leaves the store as it was."""
    before = _ids(store["url"])
    code, out = run("--store", store["url"], "prune", "--graph", "etl", "--keep", "1", "--dry-run")
    assert code == 0
    lines = out.splitlines()
    # one row per execution, not one per checkpoint: the newest etl checkpoint is kept by --keep;
    # e-new's two are protected (failed = unfinished)
    assert lines[0].split()[:4] == ["graph", "execution", "checkpoints", "bytes"]
    assert [line.split()[:3] for line in lines[1:-2]] == [["etl", "e-old", "3"]]
    assert lines[-2].startswith("would delete 3 checkpoint(s), ") and lines[-2].endswith("from 1 execution(s)")
    assert "ck-e-old" not in out
    assert "kept 2 checkpoint(s) that unfinished executions need" in out
    code, out = run("--store", store["url"], "prune", "--graph", "etl", "--keep", "1", "--dry-run", "--json")
    report = json.loads(out)
    assert report["dry_run"] and report["checkpoints"] == 3 and report["protected"] == 2
    assert [(e["execution"], e["checkpoints"]) for e in report["executions"]] == [("e-old", 3)]
    assert _ids(store["url"]) == before


def test_prune_keeps_what_unfinished_executions_need(store):
    """A real prune deletes the old completed execution but never the failed one's checkpoints."""
    code, out = run("--store", store["url"], "prune", "--keep", "1", "--yes")
    assert code == 0 and out.splitlines()[0].startswith("deleted 3 checkpoint(s), ")
    assert _ids(store["url"]) == {"ck-e-new-0", "ck-e-new-1", "ck-e-other-0"}


def test_prune_by_age(store):
    """--max-age deletes checkpoints older than that many seconds (unprotected ones only)."""
    code, out = run("--store", store["url"], "prune", "--max-age", str(86400), "--yes")
    assert code == 0 and out.splitlines()[0].startswith("deleted 3 checkpoint(s), ")
    assert _ids(store["url"]) == {"ck-e-new-0", "ck-e-new-1", "ck-e-other-0"}
    code, out = run("--store", store["url"], "prune", "--max-age", "10")  # (nothing to confirm)
    assert out.splitlines()[0].startswith("deleted 0 checkpoint(s)")  # the rest is protected
    assert _ids(store["url"]) == {"ck-e-new-0", "ck-e-new-1", "ck-e-other-0"}


def test_prune_without_a_rule_is_refused(store, capsys):
    code, _ = run("--store", store["url"], "prune")
    assert code == 2 and "--keep" in capsys.readouterr().err
    assert len(_ids(store["url"])) == len(store["records"])


# -- bad input ---------------------------------------------------------------------------------------
def test_unknown_backend_lists_the_available_ones(tmp_path, capsys):
    """A URL with an unknown scheme exits 2 and names every available backend."""
    code, _ = run("--store", "nosuch://somewhere", "list")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("spark-ckpt: error: ") and "Traceback" not in err
    for name in ("memory", "file", "sqlite"):
        assert name in err


def test_not_a_url_is_a_clear_error(capsys):
    code, _ = run("--store", "checkpoints.db", "list")
    err = capsys.readouterr().err
    assert code == 2 and "not a backend URL" in err


def test_missing_store_is_reported_and_not_created(tmp_path, capsys):
    """Reading commands never create an empty store where none exists."""
    missing = tmp_path / "nowhere.db"
    code, _ = run("--store", f"sqlite:///{missing}", "list")
    assert code == 2 and "no checkpoint store" in capsys.readouterr().err
    assert not missing.exists()


def test_bad_number_is_a_usage_error(store, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--store", store["url"], "list", "--limit", "0"])
    assert exc.value.code == 2 and "must be > 0" in capsys.readouterr().err


# -- encrypted stores --------------------------------------------------------------------------------
def test_encrypted_store_needs_its_key(tmp_path, no_env_config, monkeypatch, capsys):
    """Without the key, `show` fails cleanly and `verify` reports the checkpoint as unreadable, not corrupt."""
    from spark_ckpt.codec.crypto import new_key

    url = f"sqlite:///{tmp_path / 'enc.db'}"
    key = new_key()
    codec = CheckpointConfig(encryption_keys={"k1": key}).make_codec()
    record = _checkpoint("etl", "e-enc", 0, NOW)
    blob = codec.encode(record, Identity("etl", "e-enc", 0))
    backend = open_backend(url)
    backend.put(record.header(size=len(blob)), blob)
    backend.close()

    code, out = run("--store", url, "verify")
    assert code == 1 and "UNREADABLE ck-e-enc-0" in out and "0 corrupt, 1 unreadable" in out
    code, _ = run("--store", url, "show", "ck-e-enc-0")
    assert code == 2 and "k1" in capsys.readouterr().err

    monkeypatch.setenv("MY_KEYS", f"k1:{key}")
    code, out = run("--store", url, "--keys-env", "MY_KEYS", "show", "ck-e-enc-0", "--json")
    assert code == 0 and from_data(json.loads(out)["checkpoint"], GraphCheckpoint) == record


# -- startup -----------------------------------------------------------------------------------------
def test_cli_starts_without_importing_spark(store):
    """`list` through the real module entry point never imports Spark (it takes ~1 s to import)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "spark_ckpt.cli", "--store", store["url"], "list"],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "ck-e-other-0" in proc.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "spark_ckpt.config" in imported and "sqlite3" in imported  # the import log is real
    assert not {m for m in imported if m == "spark" or m.startswith("spark.")}


# -- rekey -------------------------------------------------------------------------------------------
def test_rekey_without_an_active_key_is_refused(store, capsys):
    """`rekey` with no encryption key configured exits 2 and changes nothing."""
    code, _ = run("--store", store["url"], "rekey")
    err = capsys.readouterr().err
    assert code == 2 and "no active encryption key" in err and "Traceback" not in err
    assert run("--store", store["url"], "verify")[0] == 0


def test_rekey_moves_every_checkpoint_to_the_active_key(store, monkeypatch, capsys):
    """After `rekey` under k2, every checkpoint reads with k2 alone; progress goes to stderr."""
    from spark_ckpt.codec.crypto import new_key

    k1, k2 = new_key(), new_key()
    monkeypatch.setenv("SPARK_CKPT_KEYS", f"k1:{k1},k2:{k2}")
    code, out = run("--store", store["url"], "--active-key", "k2", "--allow-plaintext", "rekey")
    assert code == 0, capsys.readouterr().err
    assert f"rekeyed: {len(store['records'])} checkpoint(s)" in out
    assert f"{len(store['records'])}/{len(store['records'])}" in capsys.readouterr().err
    monkeypatch.setenv("SPARK_CKPT_KEYS", f"k2:{k2}")
    assert run("--store", store["url"], "verify")[0] == 0
    monkeypatch.setenv("SPARK_CKPT_KEYS", f"k1:{k1}")
    code, out = run("--store", store["url"], "verify")
    assert code == 1 and f"0 corrupt, {len(store['records'])} unreadable" in out


def test_show_and_verify_handle_non_graph_checkpoints(tmp_path, no_env_config):
    """Agent snapshots (kind "agent") are shown key by key and verified like graph checkpoints."""
    from spark_ckpt.model import AGENT, CheckpointHeader

    url = f"sqlite:///{tmp_path / 'agent.db'}"
    codec = CheckpointConfig().make_codec()
    blob = codec.encode_data({"memory": [{"role": "user", "content": "hi"}], "step": 3}, Identity("bot", "e-a", 0))
    backend = open_backend(url)
    backend.put(CheckpointHeader("ck-agent", "bot", "e-a", 0, NOW, kind=AGENT, size=len(blob)), blob)
    backend.close()
    code, out = run("--store", url, "show", "ck-agent")
    assert code == 0 and "(agent)" in out and "  step: 3" in out and '"role":"user"' in out
    assert run("--store", url, "verify") == (0, "1 checked, 0 corrupt\n")


# -- export ------------------------------------------------------------------------------------------
def _headers(url: str) -> list[dict]:
    return json.loads(run("--store", url, "list", "--json")[1])


def test_export_copies_every_checkpoint_with_progress(store, tmp_path, capsys):
    """`export` copies into another backend kind; the copy lists and verifies the same; a rerun copies nothing."""
    target = f"file://{tmp_path / 'exported'}"
    code, out = run("export", "--from", store["url"], "--to", target)
    assert code == 0, capsys.readouterr().err
    n = len(store["records"])
    assert out.strip() == f"exported {n} checkpoint(s) from {store['url']} to {target}"
    assert f"{n}/{n}" in capsys.readouterr().err
    assert _headers(target) == _headers(store["url"])
    assert run("--store", target, "verify") == (0, f"{n} checked, 0 corrupt\n")

    code, out = run("export", "--from", store["url"], "--to", target)
    assert code == 0
    assert out.strip() == f"exported 0 checkpoint(s) from {store['url']} to {target} ({n} already there)"


def test_export_one_graph(store, tmp_path):
    target = f"sqlite:///{tmp_path / 'other.db'}"
    assert run("export", "--from", store["url"], "--to", target, "--graph", "other")[0] == 0
    assert [h["id"] for h in _headers(target)] == ["ck-e-other-0"]


def test_export_stops_at_a_damaged_checkpoint(store, tmp_path, capsys):
    """A corrupt source checkpoint is not copied; the command exits 2 naming it."""
    _corrupt(store["path"], "ck-e-new-0", lambda blob: blob[:-1] + bytes([blob[-1] ^ 0xFF]))
    target = f"sqlite:///{tmp_path / 'partial.db'}"
    code, _ = run("export", "--from", store["url"], "--to", target)
    err = capsys.readouterr().err
    assert code == 2 and "ck-e-new-0" in err and "Traceback" not in err
    assert "ck-e-new-0" not in {h["id"] for h in _headers(target)}


def test_export_from_a_missing_store_creates_nothing(tmp_path, capsys):
    target = tmp_path / "dst.db"
    code, _ = run("export", "--from", f"sqlite:///{tmp_path / 'nope.db'}", "--to", f"sqlite:///{target}")
    assert code == 2 and "no checkpoint store" in capsys.readouterr().err
    assert not target.exists()


def test_prune_on_a_file_store_sweeps_debris_of_killed_writers(tmp_path, no_env_config):
    """On a file store, prune also removes temp files a killed writer left and the directory of an
    execution it emptied; a dry run touches neither."""
    from spark_ckpt.backends.file import FileBackend

    root = tmp_path / "files"
    backend = FileBackend(root)
    codec = CheckpointConfig().make_codec()
    for record in (_checkpoint("etl", "e-old", 0, NOW - 2 * 86400, COMPLETED, result={"content": "done"}),
                   _checkpoint("etl", "e-new", 0, NOW - 60, COMPLETED, result={"content": "done"})):
        blob = codec.encode(record, Identity(record.graph_id, record.execution_id, record.seq))
        backend.put(record.header(size=len(blob)), blob)
    backend.close()
    (old_dir,) = [p for p in root.rglob("*") if p.is_dir() and p.name.endswith("e-old")]
    (new_dir,) = [p for p in root.rglob("*") if p.is_dir() and p.name.endswith("e-new")]
    leftover = new_dir / ".tmp-abc12345.part"  # an old-style temp file: no pid, so only age counts
    leftover.write_bytes(b"half a checkpoint")
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))

    code, out = run("--store", f"file://{root}", "prune", "--keep", "1", "--dry-run")
    assert code == 0 and leftover.exists() and old_dir.exists()
    code, out = run("--store", f"file://{root}", "prune", "--keep", "1", "-y")
    assert code == 0 and out.splitlines()[0].startswith("deleted 1 checkpoint(s)")
    assert "removed 1 temporary file(s)" in out
    assert not leftover.exists() and not old_dir.exists() and new_dir.exists()
    assert _ids(f"file://{root}") == {"ck-e-new-0"}


def test_show_says_when_a_checkpoint_holds_only_changed_state(tmp_path):
    """A superstep's checkpoint stores the state that changed: `show` says so and lists removed keys."""
    import asyncio

    import graphs
    from spark_ckpt import CheckpointConfig, checkpointed

    url = f"sqlite:///{tmp_path}/changes.db"
    graph = checkpointed(graphs.mutating(), config=CheckpointConfig(backend=url), graph_id="changes")
    asyncio.run(graph.run({}))
    second = sorted(graph.list_checkpoints(), key=lambda h: h.seq)[2]  # after the visit deleting "scratch"
    code, out = run("--store", url, "show", second.checkpoint_id)
    assert code == 0
    assert "changed since the previous checkpoint" in out and "  scratch: (removed)" in out
    assert "  log: (+1 items at the end) [1]" in out  # the list grew by this visit's item only
    assert "  blob:" not in out  # unchanged since the start record, so not stored again
    code, out = run("--store", url, "show", sorted(graph.list_checkpoints(), key=lambda h: h.seq)[0].checkpoint_id)
    assert "changed since" not in out and "  blob:" in out


# -- failures: one line, or the traceback with --debug -------------------------------------------------
def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spark-ckpt: error: ") and "Traceback" not in err, err
    return lines[0]


def test_an_unexpected_exception_is_one_line_pointing_at_debug(store, monkeypatch, capsys):
    """A failure that is not a SparkCkptError (a bug, a crash in a library) still exits 2 with one line
    naming the exception type and its message (newlines folded), and how to see the traceback."""
    def broken(args, out):
        raise ValueError("boom\nsecond line")

    monkeypatch.setattr("spark_ckpt.cli.parser.cmd_list", broken)
    code, _ = run("--store", store["url"], "list")
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert line == "spark-ckpt: error: unexpected ValueError: boom second line (run with --debug for the traceback)"


def test_debug_prints_the_traceback_instead(store, monkeypatch, capsys):
    """--debug prints the traceback of any failure, unexpected or not, in place of the one-line message."""
    def broken(args, out):
        raise ValueError("boom")

    monkeypatch.setattr("spark_ckpt.cli.parser.cmd_list", broken)
    code, _ = run("--debug", "--store", store["url"], "list")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback (most recent call last)" in err and "ValueError: boom" in err
    assert "spark-ckpt: error:" not in err
    code, _ = run("--debug", "--store", store["url"], "show", "ck-missing")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "CheckpointNotFoundError" in err


def test_a_bad_option_is_one_error_line(store, capsys):
    """argparse's usage errors follow the same rule: exit 2 and one `spark-ckpt: error:` line."""
    with pytest.raises(SystemExit) as exc:
        main(["--store", store["url"], "list", "--limit", "zero"])
    assert exc.value.code == 2
    assert "--help" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["--store", store["url"], "nosuchcommand"])
    _one_error_line(capsys.readouterr().err)


def test_show_prints_odd_stored_values_without_crashing(store):
    """A checkpoint whose content holds a time out of range, a number too big for JSON's 64 bits and
    nesting deeper than orjson writes is still shown, as text and as JSON (odd values as marked strings)."""
    from spark_ckpt.codec.envelope import pack_parts

    data, _ = CheckpointConfig().make_codec().decode_data(_blob(store, "ck-e-old-2"))
    data.update(timestamp=1e308, superstep=1e300)  # superstep is an int: 1e300 becomes a 997-digit one
    data["graph_state"]["deep"] = "__deep__"
    payload = orjson.dumps(data).replace(b'"__deep__"', b"[" * 300 + b"]" * 300)
    _corrupt(store["path"], "ck-e-old-2",
             lambda blob: pack_parts([{"name": "json"}], Identity("etl", "e-old", 2), payload))
    code, out = run("--store", store["url"], "show", "ck-e-old-2")
    assert code == 0 and "invalid time" in out and "deep: [[[[" in out
    code, out = run("--store", store["url"], "show", "ck-e-old-2", "--json")
    assert code == 0
    shown = json.loads(out)["checkpoint"]
    assert isinstance(shown["superstep"], str) and shown["superstep"].startswith("1000")
    assert shown["timestamp"] == 1e308 and "[[[[" in json.dumps(shown["graph_state"]["deep"])


def test_damaged_index_rows_are_reported_not_crashed_on(store, capsys):
    """A header row with values of the wrong type: `list` and `show` exit 2 with one line naming the row,
    `verify` reports it as corrupt and exits 1; a time out of range still lists."""
    conn = sqlite3.connect(store["path"])
    conn.execute("UPDATE checkpoints SET created_at = 1e300 WHERE checkpoint_id = 'ck-e-new-0'")
    conn.commit()
    code, out = run("--store", store["url"], "list")
    assert code == 0 and "invalid time" in out
    conn.execute("UPDATE checkpoints SET seq = 'one' WHERE checkpoint_id = 'ck-e-new-1'")
    conn.commit()
    conn.close()
    for argv in (["list"], ["list", "--json"], ["show", "ck-e-new-1"]):
        code, _ = run("--store", store["url"], *argv)
        line = _one_error_line(capsys.readouterr().err)
        assert code == 2 and "ck-e-new-1" in line and "seq is 'one'" in line, line
    code, out = run("--store", store["url"], "verify")
    assert code == 1 and "CORRUPT" in out and "ck-e-new-1" in out


def _blob(store: dict, checkpoint_id: str) -> bytes:
    conn = sqlite3.connect(store["path"])
    (blob,) = conn.execute("SELECT blob FROM checkpoints WHERE checkpoint_id = ?", (checkpoint_id,)).fetchone()
    conn.close()
    return bytes(blob)


def test_prune_keep_plans_and_deletes_what_a_rebase_frees(tmp_path, no_env_config):
    """--keep N on a finished run: the kept records that hold only changes are rebased, so the plan
    lists (and the run deletes) the records before them; the kept ones still read back whole. A plan
    with nothing to delete rewrites nothing."""
    import asyncio

    import graphs
    from spark_ckpt import checkpointed

    url = f"sqlite:///{tmp_path / 'store.db'}"
    graph = checkpointed(graphs.chain(6), config=CheckpointConfig(backend=url, strategy="iteration", interval=1),
                         graph_id="chain")
    asyncio.run(graph.run({}))
    final_state = graph.get_last_checkpoint().graph_state
    graph.close()
    before = _ids(url)
    assert len(before) == 7

    code, out = run("--store", url, "prune", "--keep", "3", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["checkpoints"] == 4
    code, out = run("--store", url, "prune", "--keep", "3", "--yes")
    assert code == 0 and out.splitlines()[0].startswith("deleted 4 checkpoint(s), ")
    kept = _ids(url)
    assert len(kept) == 3 and kept < before
    code, out = run("--store", url, "verify")
    assert code == 0, out
    backend = open_backend(url)
    try:
        codec = CheckpointConfig().make_codec()
        newest = max((backend.get(c) for c in kept), key=lambda r: r.header.seq)
        assert codec.decode(newest.blob, GraphCheckpoint).graph_state == final_state
        stored = {c: bytes(backend.get(c).blob) for c in kept}
    finally:
        backend.close()

    code, out = run("--store", url, "prune", "--keep", "3", "--yes")  # nothing left to delete
    assert code == 0 and out.splitlines()[0].startswith("deleted 0 checkpoint(s)")
    backend = open_backend(url)
    try:
        assert {c: bytes(backend.get(c).blob) for c in kept} == stored  # nothing rewritten
    finally:
        backend.close()


def _chain_runs(url: str, runs: int, nodes: int = 6) -> None:
    """``runs`` runs of a chain of ``nodes`` into ``url`` (graph "chain"), no retention."""
    import asyncio

    import graphs
    from spark_ckpt import checkpointed

    for _ in range(runs):
        graph = checkpointed(graphs.chain(nodes), config=CheckpointConfig(
            backend=url, strategy="iteration", interval=1, retention_count=None), graph_id="chain")
        try:
            asyncio.run(graph.run({}))
        finally:
            graph.close()


def test_prune_carries_out_the_plan_it_showed_when_the_store_changed_meanwhile(tmp_path, no_env_config, monkeypatch):
    """Another run writes between the plan (shown, confirmed) and the deletes: the run makes the kept
    records the plan named stand alone, so every checkpoint kept still reads back whole."""
    import spark_ckpt.retention as retention

    url = f"sqlite:///{tmp_path / 'store.db'}"
    _chain_runs(url, 1, nodes=8)
    plan, planned = retention._plan, []

    def another_run_after_the_plan(*args, **kwargs):
        result = plan(*args, **kwargs)
        planned.append(result)
        if len(planned) == 1:
            _chain_runs(url, 1, nodes=8)  # another worker, while the operator reads the plan
        return result

    monkeypatch.setattr(retention, "_plan", another_run_after_the_plan)
    code, out = run("--store", url, "prune", "--keep", "4", "--yes")
    monkeypatch.undo()
    assert code == 0 and out.splitlines()[0].startswith("deleted 5 checkpoint(s), ")
    code, out = run("--store", url, "verify")
    assert code == 0, out
    assert len(_ids(url)) == 9 + 9 - 5


def test_an_execution_listed_unfinished_is_kept_whole_though_it_finished_since(tmp_path, no_env_config):
    """The listing a plan is made from shows an execution still running; it finished before the
    protected set was read. Judged by records that miss its end, it is kept as a running one, not
    cut where its newest records would need the ones deleted."""
    from spark_ckpt.engine.records import rebase
    from spark_ckpt.retention import prune

    url = f"sqlite:///{tmp_path / 'store.db'}"
    _chain_runs(url, 2)
    backend = open_backend(url)
    try:
        first, second = sorted({h.execution_id for h in backend.list()},
                               key=lambda e: min(h.created_at for h in backend.list(execution_id=e)))
        end = max(h.seq for h in backend.list(execution_id=first))

        class ListedWhileRunning:
            """The store as listed before ``first`` wrote its last two records."""

            def list(self, **kwargs):
                return [h for h in backend.list(**kwargs) if not (h.execution_id == first and h.seq > end - 2)]

            def __getattr__(self, name):
                return getattr(backend, name)

        codec = CheckpointConfig().make_codec()
        keep = len(backend.list(execution_id=second))
        rules = CheckpointConfig(retention_count=keep).make_retention_rules()
        deleted = prune(ListedWhileRunning(), rules, graph_id="chain", rebase=lambda h: rebase(backend, codec, h))
        assert [h for h in deleted if h.execution_id == first] == []
    finally:
        backend.close()
    code, out = run("--store", url, "verify")
    assert code == 0, out


def test_prune_reports_only_what_it_deleted_when_another_prune_ran_meanwhile(tmp_path, no_env_config, monkeypatch):
    import spark_ckpt.retention as retention

    url = f"sqlite:///{tmp_path / 'store.db'}"
    _chain_runs(url, 2)
    plan = retention._plan

    def deleted_meanwhile(*args, **kwargs):
        doomed, bases = plan(*args, **kwargs)
        backend = open_backend(url)
        try:
            backend.delete([h.checkpoint_id for h in doomed])  # another operator's prune, just before ours
        finally:
            backend.close()
        return doomed, bases

    monkeypatch.setattr(retention, "_plan", deleted_meanwhile)
    code, out = run("--store", url, "prune", "--keep", "1", "--yes", "--json")
    monkeypatch.undo()
    assert code == 0 and json.loads(out)["checkpoints"] == 0

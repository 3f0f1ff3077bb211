"""An execution's timeline read back from its records: a run SIGKILLed mid-way and recovered by another
process shows two attempts, the visits the recovery replayed and those it ran live, and the stop between
them; the CLI draws it (``timeline``, ``--json``) and writes a self-contained HTML report, checked in
headless Chromium (screenshot and rendered DOM)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import graphs
from spark_ckpt import CheckpointConfig, checkpointed
from spark_ckpt.config import open_backend
from spark_ckpt.timeline import build_timeline
from spark_ckpt.timeline_html import render

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("crash_worker.py")
CHROMIUM = "/usr/bin/chromium"
PIPELINE_NODES = ["fetch", "transform", "publish", "report"]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The pipeline graph killed inside transform#2, then recovered by a new process."""
    tmp = tmp_path_factory.mktemp("timeline")
    store = f"sqlite:///{tmp / 'ckpt.db'}"
    runs = []
    for mode, calls, crash in (("run", "calls-1.txt", {"SPARK_CKPT_TEST_CRASH": "transform:2"}),
                               ("recover", "calls-2.txt", {})):
        runs.append(subprocess.run(
            [sys.executable, str(WORKER), mode, "pipeline", store, "pipe", json.dumps({"n": 4})],
            env=child_env(SPARK_CKPT_TEST_CALLS=str(tmp / calls), **crash), capture_output=True, text=True,
            timeout=120))
    assert runs[0].returncode == -signal.SIGKILL, runs[0].stderr[-2000:]
    assert runs[1].returncode == 0, runs[1].stderr[-3000:]
    report = json.loads(runs[1].stdout.strip().splitlines()[-1])
    backend = open_backend(store)
    try:
        execution_id = backend.executions(graph_id="pipe")[0].execution_id
    finally:
        backend.close()
    return {"store": store, "execution": execution_id, "report": report, "tmp": tmp,
            "calls_before": (tmp / "calls-1.txt").read_text().split()}


def timeline_of(store: str, execution_id: str):
    backend = open_backend(store)
    try:
        return build_timeline(backend, CheckpointConfig().make_codec(), execution_id)
    finally:
        backend.close()


def cli(store: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spark_ckpt.cli", "--store", store, *args],
                          env=child_env(SPARK_CKPT_DISABLE_PLUGINS="1"), capture_output=True, text=True, timeout=120)


def test_a_crash_and_recovery_shows_two_attempts_replayed_then_live(crashed: dict) -> None:
    t = timeline_of(crashed["store"], crashed["execution"])
    report = crashed["report"]
    assert t.status == "completed" and [a.n for a in t.attempts] == [0, 1]
    first, recovery = t.attempts
    assert first.end == "stopped" and recovery.end == "completed"
    assert recovery.from_seq == first.last_seq and recovery.first_seq > first.last_seq
    assert recovery.takeover and first.owner != recovery.owner  # another process took the lease over
    assert recovery.began_at > first.ended_at
    # what the recovery replayed is exactly what the killed process journaled, the rest ran live
    replayed = [f"{node}:{index}" for node, index in recovery.replayed]
    assert replayed == report["replayed"] == ["fetch:0", "transform:0", "transform:1"]
    assert [f"{node}:{index}" for node, index in recovery.live] == report["live"]
    assert [f"{node}:{index}" for node, index in first.live] == replayed
    assert set(replayed) < set(crashed["calls_before"])  # transform:2 ran too, but was killed before its record
    by_visit = {f"{v.node}:{v.index}": v for v in t.visits}
    assert sorted(by_visit) == sorted(report["replayed"] + report["live"])
    for name in report["replayed"]:
        assert by_visit[name].shown_as == "replayed" and by_visit[name].attempt == 0
        assert by_visit[name].replayed_by == [1] and by_visit[name].end <= first.ended_at
    for name in report["live"]:
        assert by_visit[name].shown_as == "live" and by_visit[name].attempt == 1
        assert by_visit[name].start >= recovery.began_at
    assert t.nodes == PIPELINE_NODES
    assert [c.seq for c in t.checkpoints] == sorted(c.seq for c in t.checkpoints)
    assert all(c.bytes > 0 for c in t.checkpoints) and t.total_bytes == sum(c.bytes for c in t.checkpoints)
    assert {c.attempt for c in t.checkpoints} == {0, 1} and t.failures == []


def test_cli_timeline_draws_it_and_json_holds_it(crashed: dict) -> None:
    drawn = cli(crashed["store"], "timeline", crashed["execution"])
    assert drawn.returncode == 0, drawn.stderr
    lines = drawn.stdout.splitlines()
    assert "2 attempt(s)" in lines[0] and "3 replayed" in lines[0] and "4 live" in lines[0]
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in PIPELINE_NODES}
    assert sorted(rows) == sorted(PIPELINE_NODES)
    assert "=" in rows["fetch"] and "#" not in rows["fetch"]  # replayed only
    assert "=" in rows["transform"] and "#" in rows["transform"]  # replayed, then live
    assert "#" in rows["report"] and "!" in rows["report"]  # live after the stop
    assert re.search(r"\|first run\s+\|recovery 1", drawn.stdout)
    assert "process stopped after its last checkpoint" in drawn.stdout
    assert "\x1b[" not in drawn.stdout  # plain text in a pipe

    as_json = cli(crashed["store"], "timeline", crashed["execution"], "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert [a["label"].split(" (")[0] for a in data["attempts"]] == ["first run", "recovery 1"]
    assert [f"{n}:{i}" for n, i in data["attempts"][1]["replayed"]] == crashed["report"]["replayed"]
    assert sum(v["shown_as"] == "live" for v in data["visits"]) == 4


def _on_a_terminal(store: str, *args: str, **env: str) -> str:
    """What the CLI prints with a pseudo-terminal as its stdout."""
    import pty

    controller, terminal = pty.openpty()
    try:
        environ = child_env(SPARK_CKPT_DISABLE_PLUGINS="1")
        environ.pop("NO_COLOR", None)
        environ.update(env)
        child = subprocess.Popen([sys.executable, "-m", "spark_ckpt.cli", "--store", store, *args],
                                 env=environ, stdout=terminal,
                                 stderr=subprocess.DEVNULL)
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the child is done
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert child.wait(timeout=120) == 0
    finally:
        os.close(controller)
    return b"".join(chunks).decode()


def test_cli_timeline_is_coloured_on_a_terminal_unless_no_color(crashed: dict) -> None:
    pytest.importorskip("rich")
    coloured = _on_a_terminal(crashed["store"], "timeline", crashed["execution"])
    assert "\x1b[" in coloured and "first run" in coloured
    plain = _on_a_terminal(crashed["store"], "timeline", crashed["execution"], NO_COLOR="1")
    assert "\x1b[" not in plain and "first run" in plain
    forced = cli(crashed["store"], "timeline", crashed["execution"], "--color", "always")
    assert forced.returncode == 0 and "\x1b[" in forced.stdout  # asked for, even in a pipe


def test_cli_names_a_missing_execution(crashed: dict) -> None:
    missing = cli(crashed["store"], "timeline", "no-such-execution")
    assert missing.returncode == 2 and "no graph checkpoints of execution 'no-such-execution'" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.fixture(scope="module")
def report_page(crashed: dict) -> Path:
    page = crashed["tmp"] / "run.html"
    written = cli(crashed["store"], "report", crashed["execution"], "-o", str(page))
    assert written.returncode == 0, written.stderr
    assert str(page) in written.stdout
    return page


def test_report_json_names_the_file(crashed: dict) -> None:
    page = crashed["tmp"] / "again.html"
    written = cli(crashed["store"], "report", crashed["execution"], "-o", str(page), "--json")
    assert written.returncode == 0, written.stderr
    assert json.loads(written.stdout) == {"path": str(page), "bytes": page.stat().st_size}


def test_report_is_one_self_contained_page(report_page: Path) -> None:
    html = report_page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)\s*=", html, re.I) and "http://" not in html and "https://" not in html
    assert "<script" not in html and "@import" not in html and "url(" not in html.replace("url(#stopped)", "")


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the decompressed scanlines of a PNG (enough to tell a blank page)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, size = 8, [], (0, 0)
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    return size[0], size[1], zlib.decompress(b"".join(chunks))


def _chromium(binary: str, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=60)


@pytest.fixture
def chromium() -> str:
    found = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not found:
        if os.environ.get("SPARK_CKPT_TEST_REQUIRE_SERVERS"):
            pytest.fail(f"{CHROMIUM} is required (SPARK_CKPT_TEST_REQUIRE_SERVERS is set): apt-get install chromium")
        pytest.skip(f"headless Chromium not installed at {CHROMIUM} (apt-get install chromium)")
    return found


def test_report_renders_in_headless_chromium(chromium: str, crashed: dict, report_page: Path) -> None:
    tmp = crashed["tmp"]
    shot = tmp / "run.png"
    taken = _chromium(chromium, f"--screenshot={shot}", "--window-size=1400,900", report_page.as_uri(), tmp=tmp)
    assert shot.exists(), taken.stderr[-2000:]
    width, height, pixels = _png_pixels(shot)
    assert (width, height) == (1400, 900) and shot.stat().st_size > 10_000
    # not blank: many distinct byte values (text, bars in several colours), not one background colour
    assert len(set(pixels)) > 50

    dumped = _chromium(chromium, "--dump-dom", report_page.as_uri(), tmp=tmp)
    dom = dumped.stdout
    assert dumped.returncode == 0 and "<svg" in dom, dumped.stderr[-2000:]
    for node in PIPELINE_NODES:
        assert f'class="lane" data-node="{node}"' in dom
    labels = re.findall(r'class="attempt-label"[^>]*>([^<]*)<', dom)
    assert [label.split(" (")[0] for label in labels] == ["first run", "recovery 1"]
    assert "took the lease over" in labels[1]
    assert len(re.findall(r'class="bar replayed"', dom)) == 3
    assert len(re.findall(r'class="bar live"', dom)) == 4
    assert re.search(r'class="stop" data-kind="process stopped"', dom)
    assert len(re.findall(r'class="checkpoint"', dom)) == len(re.findall(r"checkpoint seq \d+ \(", dom))
    assert "3 replayed" in dom and "4 live" in dom


def test_a_failure_and_its_recovery_in_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that raises: the failure record's failure is on the timeline; recovered by the same worker,
    no lease was taken over. Store text reaches the page escaped."""
    store = f"sqlite:///{tmp_path / 'ckpt.db'}"
    graph = checkpointed(graphs.chain(), config=CheckpointConfig(backend=store), graph_id="<b>chain</b>&")
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s2:0")
    with pytest.raises(RuntimeError, match="injected failure"):
        asyncio.run(graph.run({"n": 1}))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
    execution_id = graph.backend.executions()[0].execution_id
    asyncio.run(graph.recover_and_continue())
    t = build_timeline(graph.backend, graph.codec, execution_id)
    first, recovery = t.attempts
    assert first.end == "failed" and recovery.end == "completed" and not recovery.takeover
    assert [(f.node, f.index, f.error_type) for f in t.failures] == [("s2", 0, "RuntimeError")]
    assert "injected failure in s2" in t.failures[0].error
    assert recovery.replayed == [["s0", 0], ["s1", 0]] and recovery.live == [["s2", 0], ["s3", 0]]
    html = render(t)
    assert "&lt;b&gt;chain&lt;/b&gt;&amp;" in html and "<b>chain" not in html
    assert 'class="stop" data-kind="failed"' in html and 'class="failure-mark" data-node="s2"' in html


def test_a_fork_names_its_source_and_replays_what_it_inherited(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'ckpt.db'}"
    graph = checkpointed(graphs.chain(), config=CheckpointConfig(backend=store), graph_id="chain")
    asyncio.run(graph.run({"n": 1}))
    source = next(c for c in graph.list_checkpoints() if c.seq == 2)
    asyncio.run(graph.continue_from_checkpoint(source.checkpoint_id))
    fork_id = graph.last_recovery.execution_id
    t = build_timeline(graph.backend, graph.codec, fork_id)
    assert t.forked_from == source.checkpoint_id and t.status == "completed"
    assert [a.n for a in t.attempts] == [0] and t.attempts[0].fork_of == source.checkpoint_id
    inherited = [(v.node, v.index) for v in t.visits if v.attempt == -1]
    assert inherited == [("s0", 0), ("s1", 0)]
    assert all(v.shown_as == "replayed" for v in t.visits if v.attempt == -1)
    assert [(v.node, v.index) for v in t.visits if v.attempt == 0] == [("s2", 0), ("s3", 0)]
    assert "fork of" in render(t)


def test_visits_of_deleted_records_still_count_as_replayed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability "exit" stores whole records: once the first run's records are deleted, the recovery's
    record alone still tells which visits ran before it began (replayed) and which it ran live."""
    store = f"sqlite:///{tmp_path / 'ckpt.db'}"
    graph = checkpointed(graphs.chain(), config=CheckpointConfig(backend=store, durability="exit"), graph_id="chain")
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s2:0")
    with pytest.raises(RuntimeError, match="injected failure"):
        asyncio.run(graph.run({"n": 1}))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
    execution_id = graph.backend.executions()[0].execution_id
    first_run = [h.checkpoint_id for h in graph.backend.list(execution_id=execution_id)]
    asyncio.run(graph.recover_and_continue())
    graph.backend.delete(first_run)
    t = build_timeline(graph.backend, graph.codec, execution_id)
    assert [a.n for a in t.attempts] == [1]
    assert [(v.node, v.attempt, v.shown_as) for v in t.visits] == [
        ("s0", 0, "replayed"), ("s1", 0, "replayed"), ("s2", 1, "live"), ("s3", 1, "live")]
    assert t.attempts[0].replayed == [["s0", 0], ["s1", 0]] and t.attempts[0].live == [["s2", 0], ["s3", 0]]
    assert "attempt 0 (its checkpoints were deleted)" in render(t)

"""The demo's driver: start worker A, let it die, recover in worker B, compare with an uninterrupted run.

1. worker A (a new process) runs the workflow, checkpointed into the store, and SIGKILLs itself inside
   the N-th transform pass (``--crash-after N``), after doing part of that pass's work;
2. worker B (another new process) builds the same graph and calls ``recover_and_continue()``:
   visits completed before the crash are replayed from the journal, the rest run live;
3. the same workflow runs uninterrupted, unwrapped, in this process.

Invariants: the verdict trusts the side files, not the library's report: a visit counts as run
when its ``process()`` wrote an ``end`` line in that process. PASS needs every check: A died by
SIGKILL, B finished, no visit A completed ran again in B, the killed visit ran again live, exactly
A's completed visits were replayed, every visit completed once in the uninterrupted run's order,
and the result, graph state and recovery report agree with the uninterrupted run. The store must
outlive a process (a ``ConfigError`` otherwise).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from ..errors import ConfigError
from ..masking import mask_url
from .workflow import DEMO_INPUT, build_graph, content_of

WORKER_TIMEOUT_S = 120


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _spawn_worker(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # the worker must import this very copy of spark_ckpt, wherever it was run from
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "spark_ckpt.demo", "worker", *args],
        env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
    )


async def _reference_run(side_file: str) -> tuple[Any, dict[str, Any]]:
    import copy

    graph = build_graph(side_file)
    result = await graph.run(DEMO_INPUT)
    return content_of(result), copy.deepcopy(graph.get_state_snapshot())


def _ends(lines: list[dict[str, Any]], pid: int | None = None) -> list[tuple[str, int]]:
    return [(x["node"], x["visit"]) for x in lines if x["phase"] == "end" and (pid is None or x["pid"] == pid)]


def _starts(lines: list[dict[str, Any]], pid: int) -> list[tuple[str, int]]:
    return [(x["node"], x["visit"]) for x in lines if x["phase"] == "start" and x["pid"] == pid]


def _same(a: Any, b: Any) -> bool:
    # compare as JSON so tuples/lists and key order do not matter; both sides went through JSON anyway
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def run_demo(store: str, crash_after: int = 3, out: TextIO | None = None, work_dir: str | None = None) -> bool:
    """Run the whole demo; print what happened and a PASS/FAIL line. Returns True on PASS.

    ``work_dir`` keeps the side files (``executions.jsonl``: every real ``process()`` start/end;
    ``visits.jsonl``: every visit the checkpoint layer reported) instead of a temporary directory.
    """
    out = out or sys.stdout
    n_items = len(DEMO_INPUT["items"])
    if not 1 <= crash_after <= n_items:
        raise ConfigError(f"--crash-after must be between 1 and {n_items} (the transform loop has {n_items} passes)")
    _require_durable(store)
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        for name in ("executions.jsonl", "visits.jsonl", "reference.jsonl", "result-a.json", "result-b.json"):
            Path(work_dir, name).unlink(missing_ok=True)
        return _run_demo(store, crash_after, out, work_dir)
    with tempfile.TemporaryDirectory(prefix="spark-ckpt-demo-") as tmp:
        return _run_demo(store, crash_after, out, tmp)


def _require_durable(store: str) -> None:
    from ..config import open_backend

    backend = open_backend(store)
    try:
        if not backend.durable:
            raise ConfigError(
                f"the demo needs a store that outlives a process, and {mask_url(store)!r} does not "
                f"(its data dies with the killed worker); use e.g. sqlite://./demo-checkpoints.db"
            )
    finally:
        backend.close()


def _run_demo(store: str, crash_after: int, out: TextIO, tmp: str) -> bool:
    n_items = len(DEMO_INPUT["items"])
    p = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    side, events = Path(tmp, "executions.jsonl"), Path(tmp, "visits.jsonl")
    result_a, result_b = Path(tmp, "result-a.json"), Path(tmp, "result-b.json")
    common = ["--store", store, "--side-file", str(side), "--events-file", str(events)]

    p(f"checkpoint store: {mask_url(store)}")
    p(f"1. worker A runs the workflow; it kills itself (SIGKILL) inside transform pass {crash_after} of {n_items}")
    a = _spawn_worker([*common, "--result-file", str(result_a), "--crash-after", str(crash_after)])
    executions = _read_lines(side)
    pid_a = executions[0]["pid"] if executions else None
    checks: list[tuple[bool, str]] = []
    checks.append((a.returncode == -signal.SIGKILL,
                   f"worker A was killed by SIGKILL (exit status {a.returncode})"))
    if a.returncode != -signal.SIGKILL:
        return _verdict(checks, out, a)
    execution_id = next((e["execution"] for e in _read_lines(events)), None)
    p(f"   worker A (pid {pid_a}) died in execution {execution_id}")

    p("2. worker B, a brand-new process, builds the same graph and calls recover_and_continue()")
    b = _spawn_worker([*common, "--result-file", str(result_b), "--recover",
                       *(["--execution", execution_id] if execution_id else [])])
    checks.append((b.returncode == 0, f"worker B finished (exit status {b.returncode})"))
    if b.returncode != 0:
        return _verdict(checks, out, b)
    outcome = json.loads(result_b.read_text(encoding="utf-8"))
    executions = _read_lines(side)
    pid_b = next((x["pid"] for x in executions if x["pid"] != pid_a), None)
    visits_b = [v for v in _read_lines(events) if v["pid"] != pid_a]

    p("3. the same workflow runs uninterrupted and unwrapped in this process, for comparison")
    ref_side = Path(tmp, "reference.jsonl")
    ref_result, ref_state = asyncio.run(_reference_run(str(ref_side)))
    reference_visits = _ends(_read_lines(ref_side))

    done_a = set(_ends(executions, pid_a))
    killed = [v for v in _starts(executions, pid_a) if v not in done_a]
    live_b = _ends(executions, pid_b)
    replayed_b = [(v["node"], v["visit"]) for v in visits_b if v["replayed"]]

    p("\nvisit            worker A              worker B")
    for visit in reference_visits:
        in_a = "ran live" if visit in done_a else "killed mid-visit" if visit in killed else "-"
        in_b = ("replayed from journal" if visit in replayed_b
                else "ran live" if visit in live_b else "-")
        p(f"{visit[0] + '#' + str(visit[1]):<16} {in_a:<21} {in_b}")
    if outcome["lease_wait_s"]:
        p(f"\nworker B waited {outcome['lease_wait_s']:.1f} s for the killed worker's lease to lapse")
    else:
        p("\nworker B took the execution over at once (its previous owner's process is gone)")
    if outcome["recovery"] is not None:
        p(f"worker B resumed from checkpoint {outcome['recovery']['from_checkpoint']}")
    p(f"replayed from the journal: {len(replayed_b)} visit(s); ran live after recovery: {len(live_b)}")
    p(f"result:      {json.dumps(outcome['result'])}")
    p(f"graph state: {json.dumps(outcome['state'], sort_keys=True)}")

    reexecuted = sorted(done_a & set(_starts(executions, pid_b)))
    checks += [
        (bool(done_a) and bool(replayed_b), f"worker A completed {len(done_a)} visit(s) before the kill; "
                                            f"worker B replayed {len(replayed_b)}"),
        (not reexecuted, "no visit completed by worker A ran again in worker B"
                         + (f" (re-executed: {reexecuted})" if reexecuted else "")),
        (len(killed) == 1 and killed[0] in live_b, f"the visit killed mid-run ({_fmt(killed)}) ran again live"),
        (sorted(set(replayed_b)) == sorted(done_a), "exactly the visits worker A completed were replayed"),
        (_ends(executions, pid_a) + live_b == reference_visits,
         "every visit ran to completion exactly once, in the uninterrupted run's order"),
        (_same(outcome["result"], ref_result), "the result equals the uninterrupted run's"),
        (_same(outcome["state"], ref_state), "the graph state equals the uninterrupted run's"),
        (outcome["recovery"] is not None
         and sorted(map(tuple, outcome["recovery"]["replayed"])) == sorted(set(replayed_b)),
         "the recovery report lists the same replayed visits"),
    ]
    if not _same(outcome["result"], ref_result):
        p(f"uninterrupted result:      {json.dumps(ref_result)}")
    if not _same(outcome["state"], ref_state):
        p(f"uninterrupted graph state: {json.dumps(ref_state, sort_keys=True)}")
    return _verdict(checks, out)


def _fmt(visits: list[tuple[str, int]]) -> str:
    return ", ".join(f"{n}#{i}" for n, i in visits) or "none"


def _verdict(checks: list[tuple[bool, str]], out: TextIO, failed_worker: subprocess.CompletedProcess | None = None) -> bool:
    print("", file=out)
    for ok, text in checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {text}", file=out)
    if failed_worker is not None:
        tail = (failed_worker.stderr or "").strip().splitlines()[-15:]
        if tail:
            print("worker stderr (last lines):", file=out)
            for line in tail:
                print(f"  | {line}", file=out)
    passed = all(ok for ok, _ in checks)
    if passed:
        print("PASS: recovered after SIGKILL without re-running completed visits; same result and state", file=out)
    else:
        print("FAIL: see the checks above", file=out)
    return passed


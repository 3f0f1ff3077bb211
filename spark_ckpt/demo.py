"""The crash-recovery demo: ``spark-ckpt demo`` (or ``python -m spark_ckpt.demo``).

A Spark workflow with a loop and a conditional branch::

    fetch -> transform --(done=False)--> transform            (one pass per batch item)
                       --(done=True, needs_review=True)--> review  -> report
                       --(done=True, needs_review=False)-> publish -> report

1. worker A (a new process) runs it, checkpointed into SQLite, and SIGKILLs itself inside the
   N-th transform pass (``--crash-after N``), after doing part of that pass's work;
2. worker B (another new process) builds the same graph and calls ``recover_and_continue()``:
   visits completed before the crash are replayed from the journal, the rest run live;
3. the same workflow runs uninterrupted, unwrapped, in this process; the result and graph state
   must be equal, and no completed visit may have run twice.

Every real execution of a node's ``process()`` appends a line to a side file, so the demo counts
live executions per visit across processes instead of trusting the library's own report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from .errors import ConfigError, LeaseError
from .markers import hookimpl

GRAPH_ID = "demo"
DEMO_INPUT = {"items": [3, 1, 4, 1, 5, 9, 2, 6], "review_threshold": 100}
# A new worker on the same machine takes a dead worker's lease over at once; elsewhere (or if the pid
# was reused) it must wait for the lease to lapse, so the demo keeps leases short.
LEASE_TTL_S = 1.0
WORKER_TIMEOUT_S = 120


# -- the workflow ----------------------------------------------------------------------------------
def _journal(path: str | None, node: str, visit: int, phase: str) -> None:
    """Append one line per real ``process()`` phase; survives SIGKILL (written before the kill)."""
    if path is None:
        return
    line = json.dumps({"pid": os.getpid(), "node": node, "visit": visit, "phase": phase})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def build_graph(side_file: str | None = None, crash_at: int | None = None) -> Any:
    """The demo graph. ``crash_at`` (0-based transform pass) makes the process SIGKILL itself there."""
    from spark.graphs import Graph
    from spark.nodes import Node

    class DemoNode(Node):
        async def visit(self, context: Any) -> Any:
            raise NotImplementedError

        async def process(self, context: Any) -> Any:
            index = await self.visit_index(context)
            _journal(side_file, self.id, index, "start")
            output = await self.visit(context)
            _journal(side_file, self.id, index, "end")
            return output

        async def visit_index(self, context: Any) -> int:
            return 0  # visited once per run

    class Fetch(DemoNode):
        async def visit(self, context: Any) -> Any:
            items = list(context.inputs.content["items"])
            state = context.graph_state
            await state.set("items", items)
            await state.set("review_threshold", context.inputs.content["review_threshold"])
            await state.set("position", 0)
            await state.set("total", 0)
            await state.set("squares", [])
            return {"fetched": len(items)}

    class Transform(DemoNode):
        async def visit_index(self, context: Any) -> int:
            return await context.graph_state.get("position", 0)

        async def visit(self, context: Any) -> Any:
            state = context.graph_state
            position = await state.get("position")
            items = await state.get("items")
            square = items[position] * items[position]
            squares = list(await state.get("squares")) + [square]
            await state.set("squares", squares)
            if crash_at is not None and position == crash_at:
                # Half of this pass's state changes are made, then the process dies: recovery must not
                # keep them (they were never checkpointed) and must run this pass again.
                os.kill(os.getpid(), signal.SIGKILL)
            total = await state.get("total") + square
            await state.set("total", total)
            await state.set("position", position + 1)
            done = position + 1 >= len(items)
            return {
                "done": done,
                "needs_review": total > await state.get("review_threshold"),
                "total": total,
            }

    class Review(DemoNode):
        async def visit(self, context: Any) -> Any:
            total = context.inputs.content["total"]
            await context.graph_state.set("reviewed", True)
            return {"total": total, "route": "review", "approved": total < 1000}

    class Publish(DemoNode):
        async def visit(self, context: Any) -> Any:
            return {"total": context.inputs.content["total"], "route": "publish", "approved": True}

    class Report(DemoNode):
        async def visit(self, context: Any) -> Any:
            squares = await context.graph_state.get("squares")
            content = context.inputs.content
            report = f"{len(squares)} items, sum of squares {content['total']}, via {content['route']}"
            await context.graph_state.set("report", report)
            return {"report": report, "approved": content["approved"]}

    fetch, transform = Fetch(id="fetch"), Transform(id="transform")
    review, publish, report = Review(id="review"), Publish(id="publish"), Report(id="report")
    fetch >> transform
    transform.on(done=False) >> transform
    transform.on(done=True, needs_review=True) >> review
    transform.on(done=True, needs_review=False) >> publish
    review >> report
    publish >> report
    return Graph(start=fetch)


def _content(result: Any) -> Any:
    return getattr(result, "content", result)


# -- the worker process ----------------------------------------------------------------------------
class VisitRecorder:
    """Writes every node visit the checkpoint layer reports (live or replayed) to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path

    @hookimpl
    def spark_ckpt_post_node(self, event: Any) -> None:
        line = json.dumps({
            "pid": os.getpid(), "execution": event.execution_id, "node": event.node_key,
            "visit": event.visit_index, "superstep": event.superstep, "replayed": event.replayed,
        })
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


async def _worker(args: argparse.Namespace) -> int:
    from . import checkpointed
    from .config import CheckpointConfig
    from .plugins import get_plugin_manager

    get_plugin_manager().register(VisitRecorder(args.events_file), name="spark-ckpt-demo-recorder")
    config = CheckpointConfig(backend=args.store, lease_ttl_s=LEASE_TTL_S)
    crash_at = args.crash_after - 1 if args.crash_after else None
    graph = checkpointed(build_graph(args.side_file, crash_at), config=config, graph_id=GRAPH_ID)
    try:
        waited = 0.0
        if args.recover:
            started = time.monotonic()
            deadline = started + LEASE_TTL_S * 10
            while True:
                try:
                    result = await graph.recover_and_continue(execution_id=args.execution)
                    break
                except LeaseError:
                    # the killed worker's lease has not lapsed yet
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(LEASE_TTL_S / 4)
                    waited = time.monotonic() - started
            report = graph.last_recovery
            recovery = None if report is None else {
                "from_checkpoint": report.from_checkpoint,
                "replayed": [list(v) for v in report.replayed],
                "live": [list(v) for v in report.live],
                "fell_back": list(report.fell_back),
            }
        else:
            result = await graph.run(DEMO_INPUT)
            recovery = None
        outcome = {
            "result": _content(result), "state": graph.get_state_snapshot(), "recovery": recovery,
            "lease_wait_s": waited,
        }
        Path(args.result_file).write_text(json.dumps(outcome), encoding="utf-8")
    finally:
        graph.close()
    return 0


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m spark_ckpt.demo worker")
    parser.add_argument("--store", required=True)
    parser.add_argument("--side-file", required=True)
    parser.add_argument("--events-file", required=True)
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--crash-after", type=int, default=None)
    parser.add_argument("--recover", action="store_true")
    parser.add_argument("--execution", default=None)
    return asyncio.run(_worker(parser.parse_args(argv)))


# -- the driver ------------------------------------------------------------------------------------
def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _spawn_worker(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # the worker must import this very copy of spark_ckpt, wherever it was run from
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "spark_ckpt.demo", "worker", *args],
        env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
    )


async def _reference_run(side_file: str) -> tuple[Any, dict[str, Any]]:
    import copy

    graph = build_graph(side_file)
    result = await graph.run(DEMO_INPUT)
    return _content(result), copy.deepcopy(graph.get_state_snapshot())


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
    from .config import open_backend

    backend = open_backend(store)
    try:
        if not backend.durable:
            raise ConfigError(
                f"the demo needs a store that outlives a process, and {store!r} does not "
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

    p(f"checkpoint store: {store}")
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:])
    from .cli import main as cli_main

    return cli_main(["demo", *argv])


if __name__ == "__main__":
    sys.exit(main())

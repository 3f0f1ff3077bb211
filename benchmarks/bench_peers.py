"""spark-ckpt next to a peer, LangGraph + SqliteSaver, on the same workloads.

    pip install langgraph langgraph-checkpoint-sqlite   # benchmark-only, not a project dependency
    python benchmarks/bench_peers.py [--runs 200] [--quick]

Each framework is compared with its own bare (uncheckpointed) run, both checkpointing to SQLite after
every step with synchronous durability (spark-ckpt: strategy="iteration", interval=1, durability
"sync"; LangGraph: SqliteSaver, ``invoke(..., durability="sync")``, a new thread_id per run).

a-c. A 10-node chain, each node writing ~100 B into state: (a) as is, (b) with a 1 MB string in state
     no node touches, (c) with a list of 200 x 2 KB items every node appends one item to. Median
     per-run time over alternating runs in one process (bench_graph.alternate: all four variants take
     turns, so cache and CPU-frequency drift hit them alike), as a ratio to the framework's bare run
     and as microseconds added per step.
d.   Bytes stored by one run of a single node looping 1,000 times (~100 B written per step), divided
     by the 100 kB the steps wrote: spark-ckpt's checkpoint sizes (every checkpoint kept, as LangGraph
     keeps them), LangGraph's checkpoint and write blobs.
e.   Recovery after SIGKILL at step K: a child process runs the loop and is killed at step K, a fresh
     child times (after its imports and an untimed 1-step warm-up run) building the graph, recovering
     and finishing 10 more steps. spark-ckpt keeps every checkpoint there, as LangGraph does
     (retention_count=None); a second child, on a copy of the same store, times the same with the
     default retention (the newest 100 checkpoints kept: the run's end prunes the K before them).
f.   Peak RSS (VmHWM, as ru_maxrss survives exec; one child process per configuration, 3 runs of
     the chain each) of spark-ckpt wrapped vs bare with 1 KB / 1 MB / 50 MB of state, as a multiple of the state size.

langgraph missing: prints one line and exits 0. ``--quick`` is a smoke run (< 1 minute).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_graph as bg  # noqa: E402  (the helpers shared with the spark-ckpt-only benchmark)

N_NODES = bg.N_NODES
PAYLOAD = 100  # bytes each step writes
LOOP_STEPS = 1_000
AFTER_CRASH = 10  # steps the recovering process runs after the crashed one's last step


# ---------------------------------------------------------------- graphs


def spark_loop(steps: int, crash_at: int | None = None, marker: Path | None = None):
    """One Spark node looping ``steps`` times, writing ~100 B per step; at step ``crash_at`` it writes
    ``marker`` and stalls until killed."""
    from spark.graphs import Graph
    from spark.nodes import Node

    class Loop(Node):
        async def process(self, context):
            n = await context.graph_state.get("n", 0) + 1
            await context.graph_state.set("n", n)
            await context.graph_state.set("payload", f"{n:08d}".ljust(PAYLOAD, "x"))
            if n == crash_at:
                stall(marker)
            return {"done": n >= steps}

    loop = Loop(id="loop")
    loop.on(done=False) >> loop
    return Graph(start=loop)


def stall(marker: Path) -> None:
    """Tell the parent this step is reached, then block (the event loop too) until SIGKILL."""
    marker.write_text("reached")
    time.sleep(3600)


def wrap_loop(workdir: Path, graph, retention_count: int | None = 100):
    from spark_ckpt import CheckpointConfig, checkpointed

    cfg = CheckpointConfig(backend="sqlite", path=str(workdir / "spark.db"), strategy="iteration", interval=1,
                           retention_count=retention_count)
    return checkpointed(graph, config=cfg, graph_id="loop")


def lg_chain(checkpointer, state_bytes: int = 0, list_items: int = 0):
    """bench_graph.build_chain's twin in LangGraph; returns (compiled graph, its input)."""
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    fields: dict = {"go": int, "blob": str, "log": list} | {f"step{i}": str for i in range(N_NODES)}
    builder = StateGraph(TypedDict("ChainState", fields, total=False))

    def step(i: int):
        def node(state):
            out = {f"step{i}": "x" * PAYLOAD}
            if list_items:  # no reducer on "log": the node replaces it with old + [item], like Spark's
                out["log"] = state["log"] + [{"from": f"step{i}", "text": "m" * 2000}]
            return out
        return node

    names = [f"step{i}" for i in range(N_NODES)]
    for i, name in enumerate(names):
        builder.add_node(name, step(i))
    for a, b in zip([START] + names, names + [END]):
        builder.add_edge(a, b)
    initial: dict = {"go": 1}
    if state_bytes:
        initial["blob"] = "y" * state_bytes
    if list_items:
        initial["log"] = [{"from": "before", "text": "p" * 2000} for _ in range(list_items)]
    return builder.compile(checkpointer=checkpointer), initial


def lg_loop(checkpointer, steps: int, crash_at: int | None = None, marker: Path | None = None):
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class LoopState(TypedDict):
        n: int
        payload: str

    def loop(state):
        n = state["n"] + 1
        if n == crash_at:
            stall(marker)
        return {"n": n, "payload": f"{n:08d}".ljust(PAYLOAD, "x")}

    builder = StateGraph(LoopState)
    builder.add_node("loop", loop)
    builder.add_edge(START, "loop")
    builder.add_conditional_edges("loop", lambda s: END if s["n"] >= steps else "loop")
    return builder.compile(checkpointer=checkpointer)


def lg_saver(path: Path):
    from langgraph.checkpoint.sqlite import SqliteSaver

    return SqliteSaver(sqlite3.connect(path, check_same_thread=False))


def lg_config(thread_id: str, steps: int = 0) -> dict:
    # LangGraph stops a run after recursion_limit supersteps (default 25): lift it for the loops
    return {"configurable": {"thread_id": thread_id}, "recursion_limit": steps + 2 * AFTER_CRASH + 25}


def lg_invoke_kwargs(compiled) -> dict:
    """durability="sync" (checkpoint written before the next step starts) where this version has it."""
    return {"durability": "sync"} if "durability" in inspect.signature(compiled.invoke).parameters else {}


class LangGraphRun:
    """A LangGraph graph behind the ``await graph.run(inputs)`` that bench_graph.alternate calls."""

    nodes = ()  # bench_graph.reset_snapshots walks Spark nodes; LangGraph keeps no state between runs

    def __init__(self, compiled, initial: dict, checkpointed: bool) -> None:
        self.compiled, self.initial, self.checkpointed = compiled, initial, checkpointed
        self.kwargs = lg_invoke_kwargs(compiled) if checkpointed else {}

    async def run(self, _inputs):
        config = lg_config(uuid.uuid4().hex) if self.checkpointed else None  # a new thread per run
        return self.compiled.invoke(dict(self.initial), config, **self.kwargs)


# ---------------------------------------------------------------- a-c: per-step overhead


async def chain_table(label: str, shape: dict, runs: int, workdir: Path) -> list[str]:
    name = label.split()[0]
    variants = {
        "spark-ckpt": bg.wrap(workdir, "sqlite", f"chain-{name}", **dict(shape)),
        "lg-bare": LangGraphRun(*lg_chain(None, **shape), checkpointed=False),
        "lg-sqlite": LangGraphRun(*lg_chain(lg_saver(workdir / f"lg-{name}.db"), **shape), checkpointed=True),
    }
    trim = bg._list_trimmer(shape.get("list_items", 0))

    def between_runs(graph) -> None:
        if trim and not isinstance(graph, LangGraphRun):  # only Spark keeps state across runs
            trim(graph)

    times = await bg.alternate(bg.build_chain(**shape), variants, runs, between_runs=between_runs)
    rows = []
    for framework, bare, wrapped in (("spark-ckpt", "bare", "spark-ckpt"), ("LangGraph", "lg-bare", "lg-sqlite")):
        bare_us, run_us = (statistics.median(times[k]) * 1e6 for k in (bare, wrapped))
        rows.append(f"| {label} | {framework} | {bare_us:.0f} | {run_us:.0f} | "
                    f"{bg.median_ratio(times[wrapped], times[bare]):.2f}x | {(run_us - bare_us) / N_NODES:.0f} |")
    return rows


async def chain_tables(runs: int, workdir: Path) -> list[str]:
    out = []
    shapes = [
        ("a. 10-node chain, ~100 B per node", {}, runs),
        ("b. + 1 MB string in state, untouched", {"state_bytes": 1_000_000}, max(5, runs // 4)),
        ("c. + 200 x 2 KB list, +1 item per node", {"list_items": 200}, max(5, runs // 2)),
    ]
    for label, shape, n in shapes:
        out += [f"{label}: median per-run time over {n} alternating runs (after 20 warm-up rounds), "
                "SQLite, sync durability, checkpoint after every step",
                "",
                "| workload | framework | bare run (us) | checkpointed run (us) | ratio to bare "
                "| added per step (us) |",
                "|---|---|---|---|---|---|"]
        out += await chain_table(label, shape, n, workdir)
        out.append("")
    return out


# ---------------------------------------------------------------- d: bytes stored


def sqlite_file_bytes(path: Path) -> int:
    """The database's size once its WAL is folded in (pages, indexes and free space included)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


async def storage_table(workdir: Path) -> list[str]:
    from spark.nodes.types import NodeMessage

    raw = LOOP_STEPS * PAYLOAD
    spark_dir = workdir / "storage-spark"
    spark_dir.mkdir()
    graph = wrap_loop(spark_dir, spark_loop(LOOP_STEPS), retention_count=None)  # every checkpoint kept, as LangGraph does
    await graph.run(NodeMessage(content={}))
    spark_blobs = sum(h.size for h in graph.list_checkpoints())
    graph.close()

    lg_db = workdir / "storage-lg.db"
    compiled = lg_loop(lg_saver(lg_db), LOOP_STEPS)
    compiled.invoke({"n": 0, "payload": ""}, lg_config("storage", LOOP_STEPS), **lg_invoke_kwargs(compiled))
    conn = sqlite3.connect(lg_db)
    (lg_blobs,) = conn.execute("SELECT (SELECT coalesce(sum(length(checkpoint)), 0) FROM checkpoints)"
                               " + (SELECT coalesce(sum(length(value)), 0) FROM writes)").fetchone()
    conn.close()
    rows = [f"d. bytes stored by one run of a node looping {LOOP_STEPS:,} times, ~{PAYLOAD} B written per step "
            f"({raw:,} B raw); blobs = spark-ckpt's checkpoint sizes / LangGraph's checkpoints.checkpoint + "
            "writes.value; file = the SQLite file after a WAL checkpoint",
            "",
            "| framework | blob bytes | blobs / raw | SQLite file bytes | file / raw |",
            "|---|---|---|---|---|"]
    for name, blobs, path in (("spark-ckpt", spark_blobs, spark_dir / "spark.db"), ("LangGraph", lg_blobs, lg_db)):
        size = sqlite_file_bytes(path)
        rows.append(f"| {name} | {blobs:,} | {blobs / raw:.1f}x | {size:,} | {size / raw:.1f}x |")
    return rows


# ---------------------------------------------------------------- e: recovery after SIGKILL


def child(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          timeout=timeout, check=True)


def crash_at(framework: str, k: int, workdir: Path) -> float:
    """Start a child that runs the loop, SIGKILL it once it reports step ``k``; seconds it took."""
    marker = workdir / "reached"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", "crash", framework, str(k), str(workdir)],
                            stderr=subprocess.PIPE, text=True)
    while not marker.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{framework} crash child exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.perf_counter() - started


def recovery_table(ks: list[int], workdir: Path, max_setup_s: float) -> list[str]:
    rows = [f"e. recovery after SIGKILL at step K of a (K+{AFTER_CRASH})-step loop: a fresh process times, after "
            f"its imports and a 1-step warm-up run, building the graph, recovering and finishing the last "
            f"{AFTER_CRASH} steps (one run each)",
            "",
            "| K | framework | time to reach K, crashing run (s) | recover + finish (ms) "
            "| same, pruning to the newest 100 checkpoints at the end (ms) |",
            "|---|---|---|---|---|"]
    slowest_setup, last_k = 0.0, None
    for k in ks:
        # each K is a multiple of the last: skip it when extrapolating the last setup passes the budget
        if last_k and slowest_setup * k / last_k > max_setup_s:
            rows.append(f"| {k:,} | both | skipped: reaching it would take ~{slowest_setup * k / last_k:.0f} s | |")
            continue
        setups = []
        for framework in ("spark-ckpt", "LangGraph"):
            run_dir = workdir / f"crash-{framework}-{k}"
            run_dir.mkdir()
            setups.append(crash_at(framework, k, run_dir))
            pruning = "—"
            if framework == "spark-ckpt":
                copy = workdir / f"crash-{framework}-{k}-pruned"
                copy.mkdir()
                for part in run_dir.glob("spark.db*"):
                    shutil.copy2(part, copy / part.name)
                pruned = recovery_seconds(framework, k, copy, "100")
                pruning = f"{pruned * 1e3:.0f}"
            seconds = recovery_seconds(framework, k, run_dir, "all")
            rows.append(f"| {k:,} | {framework} | {setups[-1]:.1f} | {seconds * 1e3:.0f} | {pruning} |")
        slowest_setup = max(setups)
        last_k = k
    return rows


def recovery_seconds(framework: str, k: int, run_dir: Path, keep: str) -> float:
    out = child("recover", framework, str(k), str(run_dir), keep).stdout.strip().splitlines()[-1]
    return json.loads(out)["seconds"]


def child_crash(framework: str, k: int, workdir: Path) -> None:
    marker = workdir / "reached"
    if framework == "spark-ckpt":
        from spark.nodes.types import NodeMessage

        graph = wrap_loop(workdir, spark_loop(k + AFTER_CRASH, crash_at=k, marker=marker))
        asyncio.run(graph.run(NodeMessage(content={})))
    else:
        compiled = lg_loop(lg_saver(workdir / "lg.db"), k + AFTER_CRASH, crash_at=k, marker=marker)
        compiled.invoke({"n": 0, "payload": ""}, lg_config("crash", k + AFTER_CRASH), **lg_invoke_kwargs(compiled))
    raise SystemExit("the crash child finished without stalling at its step")


def child_recover(framework: str, k: int, workdir: Path, keep: str) -> None:
    """Time building the graph, recovering the killed run and finishing it (``keep``: "all"
    checkpoints, or the newest N). A 1-step run on a scratch store goes first, untimed: both libraries
    import parts lazily, and that is start-up, not recovery."""
    steps = k + AFTER_CRASH
    scratch = workdir / "warm-up"
    scratch.mkdir()
    if framework == "spark-ckpt":
        from spark.nodes.types import NodeMessage

        async def recover() -> tuple[float, int]:
            await wrap_loop(scratch, spark_loop(1)).run(NodeMessage(content={}))
            started = time.perf_counter()
            graph = wrap_loop(workdir, spark_loop(steps), retention_count=None if keep == "all" else int(keep))
            await graph.recover_and_continue()
            return started, await graph.state.get("n")

        started, n = asyncio.run(recover())
    else:
        warm = lg_loop(lg_saver(scratch / "lg.db"), 1)
        warm.invoke({"n": 0, "payload": ""}, lg_config("warm-up", 1), **lg_invoke_kwargs(warm))
        started = time.perf_counter()
        compiled = lg_loop(lg_saver(workdir / "lg.db"), steps)
        n = compiled.invoke(None, lg_config("crash", steps), **lg_invoke_kwargs(compiled))["n"]
    seconds = time.perf_counter() - started
    if n != steps:  # a recovery that did not finish the run measured nothing
        raise SystemExit(f"{framework} recovered to n={n}, expected {steps}")
    print(json.dumps({"seconds": seconds}))


# ---------------------------------------------------------------- f: peak RSS


def child_rss(wrapped: bool, state_bytes: int, workdir: Path) -> None:
    import spark_ckpt  # noqa: F401  (both configurations import the same modules: the gap is run time)

    graph = (bg.wrap(workdir, "sqlite", "rss", state_bytes=state_bytes) if wrapped
             else bg.build_chain(state_bytes=state_bytes))

    async def runs() -> None:
        for _ in range(3):
            await graph.run({"go": 1})
            if not wrapped:
                bg.reset_snapshots(graph)

    asyncio.run(runs())
    print(peak_rss_bytes())


def peak_rss_bytes() -> int:
    """This process's peak RSS. On Linux ru_maxrss survives exec: a child spawned by this (already
    large) benchmark reports at least the parent's peak, so read VmHWM, which is per address space."""
    import resource

    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def rss_table(sizes: list[tuple[str, int]], workdir: Path) -> list[str]:
    rows = ["f. peak RSS (VmHWM; ru_maxrss where there is no /proc) of a child process running the 10-node "
            "chain 3 times with a string of the given size in its initial state, spark-ckpt SQLite sync vs bare "
            "Spark (both import spark_ckpt)",
            "",
            "| state | bare peak RSS (MB) | spark-ckpt peak RSS (MB) | difference (MB) | difference / state size |",
            # at 1 KB the difference is spark-ckpt's fixed cost (SQLite, codec, buffers), not a per-byte one
            "|---|---|---|---|---|"]
    for label, size in sizes:
        peaks = []
        for wrapped in (False, True):
            run_dir = workdir / f"rss-{size}-{int(wrapped)}"
            run_dir.mkdir()
            peaks.append(int(child("rss", str(int(wrapped)), str(size), str(run_dir)).stdout.split()[-1]))
        diff = peaks[1] - peaks[0]
        multiple = f"{diff / size:.2f}x" if size >= 1_000_000 else "(fixed cost)"
        rows.append(f"| {label} | {peaks[0] / 1e6:.1f} | {peaks[1] / 1e6:.1f} | {diff / 1e6:.1f} | {multiple} |")
    return rows


# ---------------------------------------------------------------- main


def run_child(argv: list[str]) -> int:
    kind, *rest = argv
    if kind == "crash":
        child_crash(rest[0], int(rest[1]), Path(rest[2]))
    elif kind == "recover":
        child_recover(rest[0], int(rest[1]), Path(rest[2]), rest[3])
    elif kind == "rss":
        child_rss(rest[0] == "1", int(rest[1]), Path(rest[2]))
    return 0


def have_peer() -> bool:
    try:
        import langgraph.graph  # noqa: F401
        from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # this file re-run as a child process of section e or f
        return run_child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="alternating runs of workload a (b: 1/4, c: 1/2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: few runs, small K and states")
    args = parser.parse_args(argv)
    if not have_peer():
        print("bench_peers: langgraph / langgraph-checkpoint-sqlite not installed, nothing to compare; "
              "pip install langgraph langgraph-checkpoint-sqlite")
        return 0
    from importlib.metadata import version

    runs = 5 if args.quick else args.runs
    print(f"langgraph {version('langgraph')}, langgraph-checkpoint-sqlite {version('langgraph-checkpoint-sqlite')}\n")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print("\n".join(asyncio.run(chain_tables(runs, workdir))))
        print("\n".join(asyncio.run(storage_table(workdir))) + "\n")
        ks = [100] if args.quick else [100, 1_000, 10_000]
        # 10,000 only if reaching 1,000 took < 6 s (so reaching 10,000 stays under a minute)
        print("\n".join(recovery_table(ks, workdir, max_setup_s=60)) + "\n")
        sizes = [("1 KB", 1_000), ("1 MB", 1_000_000)] + ([] if args.quick else [("50 MB", 50_000_000)])
        print("\n".join(rss_table(sizes, workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

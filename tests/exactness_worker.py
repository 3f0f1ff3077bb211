"""A worker process for tests/test_recovery_exactness.py.

    python tests/exactness_worker.py '<json spec>'

The spec names a ``mode`` (see ``MODES``), the ``store`` URL, the ``graph`` (exactness_graphs.build)
and ``graph_id``, plus mode options. Cues for nodes come from the environment (exactness_graphs);
``SPARK_CKPT_TEST_CRASH_AFTER_CKPT=seq`` SIGKILLs this process right after checkpoint ``seq`` was
committed, and ``SPARK_CKPT_TEST_COMMITTED=path`` appends the seq of every committed checkpoint there.

Prints one JSON line last: what the mode produced, or ``{"error": ..., "mro": [...]}`` for an
exception (exit code 3).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from crash_cues import die  # noqa: E402


def error_data(exc: BaseException) -> dict:
    return {"error": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__], "message": str(exc)[:2000]}


def report_data(graph) -> dict:
    report = graph.last_recovery
    if report is None:
        return {}
    return {
        "replayed": [f"{k}:{i}" for k, i in report.replayed],
        "live": [f"{k}:{i}" for k, i in report.live],
        "skipped": [f"{k}:{i}" for k, i in report.skipped],
        "fell_back": list(report.fell_back),
        "already_completed": getattr(report, "already_completed", None),
    }


def make_plugins():
    from spark_ckpt import hookimpl

    class Cues:
        @hookimpl
        def spark_ckpt_post_checkpoint(self, event):
            path = os.environ.get("SPARK_CKPT_TEST_COMMITTED")
            if path:
                with open(path, "a") as fh:
                    fh.write(f"{event.header.seq}\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            if os.environ.get("SPARK_CKPT_TEST_CRASH_AFTER_CKPT") == str(event.header.seq):
                die()

    return Cues()


def make_graph(spec: dict):
    import exactness_graphs

    from spark_ckpt import CheckpointConfig, checkpointed

    config = CheckpointConfig(backend=spec["store"], **spec.get("config", {}))
    return checkpointed(exactness_graphs.build(spec["graph"]), config=config, graph_id=spec["graph_id"])


def outcome(graph, result) -> dict:
    return {"result": result.content if result is not None else None, "state": graph.get_state_snapshot(),
            **report_data(graph)}


def wait_for(path: str | None) -> None:
    if not path:
        return
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited 60 s for {path}")
        time.sleep(0.005)


async def mode_run(spec: dict) -> dict:
    graph = make_graph(spec)
    return outcome(graph, await graph.run(spec.get("input", {})))


async def mode_recover(spec: dict) -> dict:
    """recover_and_continue(); options: ``ready`` (a file created once set up), ``barrier`` (a file to
    wait for before recovering), ``list_first`` (report the stored seqs before recovering)."""
    graph = make_graph(spec)
    before = sorted(h.seq for h in graph.list_checkpoints()) if spec.get("list_first") else None
    if spec.get("ready"):
        open(spec["ready"], "w").close()
    wait_for(spec.get("barrier"))
    kwargs = {}
    if spec.get("execution_id"):
        kwargs["execution_id"] = spec["execution_id"]
    if spec.get("wait"):
        kwargs["wait"] = True
    return {"seqs_before": before, **outcome(graph, await graph.recover_and_continue(**kwargs))}


async def mode_recover_attempts(spec: dict) -> dict:
    """Several recovery calls, each in a fresh wrapper; each one's outcome or error."""
    attempts = []
    for kwargs in spec["attempts"]:
        graph = make_graph(spec)
        try:
            attempts.append(outcome(graph, await graph.recover_and_continue(**kwargs)))
        except Exception as exc:
            attempts.append(error_data(exc))
    return {"attempts": attempts}


async def mode_inspect(spec: dict) -> dict:
    """get_last_checkpoint() and get_current_node() on the store as it is."""
    graph = make_graph(spec)
    out = {}
    try:
        ck = graph.get_last_checkpoint()
        out["last"] = None if ck is None else {"seq": ck.seq, "status": ck.status, "id": ck.checkpoint_id}
    except Exception as exc:
        out["last"] = error_data(exc)
    try:
        out["current_node"] = graph.get_current_node()
    except Exception as exc:
        out["current_node"] = error_data(exc)
    return out


async def mode_skip_continue(spec: dict) -> dict:
    """The guide's manual flow: last checkpoint, skip the node that failed with an output, continue."""
    graph = make_graph(spec)
    ck = graph.get_last_checkpoint()
    current = graph.get_current_node()
    graph.skip_node(current, output=spec["output"])
    result = await graph.continue_from_checkpoint(ck)
    return {"skipped_node": current, **outcome(graph, result)}


def read_offsets(graph) -> dict:
    headers = graph.list_checkpoints()
    offsets = {}
    for k in range(len(headers)):
        try:
            ck = graph.get_checkpoint(offset=k)
            offsets[k] = {"seq": ck.seq, "status": ck.status, "id": ck.checkpoint_id}
        except Exception as exc:
            offsets[k] = error_data(exc)
    return {"count": len(headers), "offsets": offsets, "ids": [h.checkpoint_id for h in headers]}


async def mode_runs_then_offsets(spec: dict) -> dict:
    """Run the graph ``runs`` times with one wrapper, then read back every checkpoint by offset."""
    from spark_ckpt import CheckpointConfig

    graph = make_graph(spec)
    for _ in range(spec["runs"]):
        await graph.run(spec.get("input", {}))
    return {**read_offsets(graph), "default_retention_count": CheckpointConfig().retention_count}


async def mode_offsets(spec: dict) -> dict:
    return read_offsets(make_graph(spec))


async def mode_two_wrappers(spec: dict) -> dict:
    """Two backends on one SQLite file in this process (a second wrapped graph on the same store),
    then a run that pauses (SPARK_CKPT_TEST_PAUSE) and is SIGKILLed on cue."""
    import exactness_graphs

    from spark_ckpt import CheckpointConfig, checkpointed
    from spark_ckpt.config import open_backend

    graph = make_graph(spec)
    other = checkpointed(exactness_graphs.build(spec["graph"]), config=CheckpointConfig(backend=spec["store"]),
                         graph_id=spec["graph_id"] + "-other")
    extra = open_backend(spec["store"])
    extra.list(limit=1)
    result = await graph.run(spec.get("input", {}))
    del other, extra
    return outcome(graph, result)


MODES = {
    "run": mode_run, "recover": mode_recover, "recover_attempts": mode_recover_attempts, "inspect": mode_inspect,
    "skip_continue": mode_skip_continue, "runs_then_offsets": mode_runs_then_offsets, "offsets": mode_offsets,
    "two_wrappers": mode_two_wrappers,
}


async def main() -> int:
    spec = json.loads(sys.argv[1])
    from spark_ckpt.plugins import get_plugin_manager

    get_plugin_manager().register(make_plugins(), name="exactness-cues")
    try:
        out = await MODES[spec["mode"]](spec)
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps(error_data(exc)))
        return 3
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

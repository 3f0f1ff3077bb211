"""A worker process for crash tests: runs or recovers a test graph, may SIGKILL itself on cue.

    python tests/crash_worker.py run|recover|run_with_recovery GRAPH STORE_URL GRAPH_ID [INPUT_JSON]

``run_with_recovery`` uses ``SPARK_CKPT_TEST_RECOVERY_STRATEGY`` (default "last").

``SPARK_CKPT_TEST_EXECUTION_ID`` names the execution: ``run(..., execution_id=...)``, and recovered by that
name (``recover_and_continue(execution_id=...)``).

Crash cues (environment):
  SPARK_CKPT_TEST_CRASH=node:visit          inside that node visit (tests/graphs.py)
  SPARK_CKPT_TEST_CRASH_AFTER_CKPT=seq      right after checkpoint ``seq`` was committed
  SPARK_CKPT_TEST_CRASH_IN_WRITE=seq        in the middle of writing checkpoint ``seq``: for SQLite while
                                            its INSERT executes inside SQLite; for the file backend after
                                            the temp file is written but before it is published
Strategy (environment): SPARK_CKPT_TEST_STRATEGY names it, SPARK_CKPT_TEST_INTERVAL and
SPARK_CKPT_TEST_POLICY_OPTIONS (JSON) are its interval and options.
Prints one JSON line: result content, graph state, and the recovery report.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphs  # noqa: E402
from crash_cues import arm_crash_after_checkpoint, die  # noqa: E402

from spark_ckpt import CheckpointConfig, checkpointed  # noqa: E402


def arm_crash_in_write(graph, seq: int) -> None:
    backend = graph.backend
    conn = getattr(backend, "_conn", None)
    if conn is not None:
        # SQLite: once the INSERT of ``seq`` starts, die from SQLite's progress handler, i.e. while
        # the statement is executing inside SQLite, before it can commit.
        def trace(statement: str) -> None:
            if statement.lstrip().upper().startswith("INSERT") and f", {seq}, " in _bound(statement):
                conn.set_progress_handler(lambda: die(), 10)

        conn.set_trace_callback(trace)
        return
    real_link = os.link

    def link(src, dst, *args, **kwargs):  # file backend: the temp file is complete, not yet published
        if os.path.basename(str(dst)).startswith(f"{seq:012d}"):
            die()
        return real_link(src, dst, *args, **kwargs)

    os.link = link


def _bound(statement: str) -> str:
    # the trace callback receives the statement with parameters expanded; normalise spacing
    return " ".join(statement.replace("(", ", ").replace(")", " ,").split())


async def main() -> None:
    mode, graph_name, store, graph_id = sys.argv[1:5]
    inputs = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {"n": 4}
    durability = os.environ.get("SPARK_CKPT_TEST_DURABILITY", "sync")
    strategy = {"strategy": os.environ.get("SPARK_CKPT_TEST_STRATEGY", "iteration"),
                "interval": float(os.environ.get("SPARK_CKPT_TEST_INTERVAL", "1")),
                "policy_options": json.loads(os.environ.get("SPARK_CKPT_TEST_POLICY_OPTIONS", "{}"))}
    graph = checkpointed(
        graphs.build(graph_name), config=CheckpointConfig(backend=store, durability=durability, **strategy),
        graph_id=graph_id,
    )
    arm_crash_after_checkpoint()
    if os.environ.get("SPARK_CKPT_TEST_CRASH_IN_WRITE"):
        arm_crash_in_write(graph, int(os.environ["SPARK_CKPT_TEST_CRASH_IN_WRITE"]))
    if os.environ.get("SPARK_CKPT_TEST_TASK"):  # the input as a Spark Task with a budget and metadata
        from spark.graphs.tasks import Budget, CampaignInfo, Task
        from spark.nodes.types import NodeMessage

        inputs = Task(task_id="nightly-1", inputs=NodeMessage(content=inputs), budget=Budget(max_seconds=60),
                      campaign=CampaignInfo(campaign_id="c1"), metadata={"owner": "ops"}, correlation_id="corr-9")
    named = os.environ.get("SPARK_CKPT_TEST_EXECUTION_ID")  # a named execution: run, recovered by that name
    if mode == "run":
        result = await graph.run(inputs, **({"execution_id": named} if named else {}))
    elif mode == "run_with_recovery":
        strategy = os.environ.get("SPARK_CKPT_TEST_RECOVERY_STRATEGY", "last")
        result = await graph.run_with_recovery(inputs, max_retries=3, strategy=strategy,
                                               **({"execution_id": named} if named else {}))
    else:
        result = await graph.recover_and_continue(**({"execution_id": named} if named else {}))
    report = graph.last_recovery
    state = graph.get_state_snapshot()
    for volatile in ("started_at", "updated_at", "duration_seconds"):  # wall-clock times Spark stamps
        state.get("task_metadata", {}).pop(volatile, None)
    print(json.dumps({
        "result": result.content,
        "state": state,
        "replayed": [f"{k}:{i}" for k, i in report.replayed] if report else [],
        "live": [f"{k}:{i}" for k, i in report.live] if report else [],
        "fell_back": report.fell_back if report else [],
        "steps": [[s.step, s.outcome] for s in report.steps] if report else [],
    }, default=str))


if __name__ == "__main__":
    asyncio.run(main())

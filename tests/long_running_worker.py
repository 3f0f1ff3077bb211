"""A worker process for long-running crash tests: runs or recovers ``long_running_graphs.build()``,
may SIGKILL itself on cue.

    python tests/long_running_worker.py run|recover STORE_URL GRAPH_ID N

Crash cues (environment): ``SPARK_CKPT_TEST_CRASH=node:item`` inside that processing
(``long_running_graphs``); ``SPARK_CKPT_TEST_CRASH_AFTER_CKPT=seq`` right after record ``seq`` was
committed. Prints one JSON line: the result content, the graph state, the node states and the
recovery report.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import long_running_graphs  # noqa: E402
from crash_cues import arm_crash_after_checkpoint  # noqa: E402

from spark_ckpt import CheckpointConfig, checkpointed  # noqa: E402


def node_states(graph) -> dict:
    return {node.id: {"process_count": node._state.get("process_count"), "seen": node._state.get("seen")}
            for node in graph.nodes}


async def main() -> None:
    mode, store, graph_id, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    graph = checkpointed(long_running_graphs.build(), config=CheckpointConfig(backend=store), graph_id=graph_id)
    arm_crash_after_checkpoint()
    if mode == "run":
        result = await graph.run(long_running_graphs.task(n))
    else:
        result = await graph.recover_and_continue()
    report = graph.last_recovery
    print(json.dumps({
        "result": result.content,
        "state": graph.get_state_snapshot(),
        "nodes": node_states(graph),
        "live": [f"{k}:{i}" for k, i in report.live] if report else [],
        "from_checkpoint": report.from_checkpoint if report else None,
    }, default=str))


if __name__ == "__main__":
    asyncio.run(main())

"""A worker process for the subgraph crash tests: runs or recovers a graph of ``subgraph_graphs``,
SIGKILLing itself on the cue in ``SPARK_CKPT_TEST_CRASH`` (see ``graphs.py``).

    python tests/subgraph_worker.py run|recover GRAPH STORE_URL GRAPH_ID

Prints one JSON line: result content, graph state, the outer recovery report and, per subgraph visit
that ran during the recovery, where its inner run continued from (nested ones under ``nested``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import subgraph_graphs  # noqa: E402

from spark_ckpt import CheckpointConfig, checkpointed  # noqa: E402


def visits(pairs) -> list[str]:
    return [f"{key}:{index}" for key, index in pairs]


def subgraph_reports(report) -> list[dict]:
    return [{
        "node": entry.node_key, "visit": entry.visit_index, "resumed_from": entry.resumed_from,
        "reason": entry.reason, "replayed": visits(entry.inner.replayed), "live": visits(entry.inner.live),
        "nested": subgraph_reports(entry.inner),
    } for entry in report.subgraphs]


async def main() -> None:
    mode, graph_name, store, graph_id = sys.argv[1:5]
    graph = checkpointed(subgraph_graphs.build(graph_name), config=CheckpointConfig(backend=store), graph_id=graph_id)
    if mode == "run":
        result = await graph.run({"n": 1})
    else:
        result = await graph.recover_and_continue()
    report = graph.last_recovery
    print(json.dumps({
        "result": result.content,
        "state": graph.get_state_snapshot(),
        "replayed": visits(report.replayed) if report else [],
        "live": visits(report.live) if report else [],
        "subgraphs": subgraph_reports(report) if report else [],
    }, default=str))


if __name__ == "__main__":
    asyncio.run(main())

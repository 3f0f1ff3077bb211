"""A worker process for the state history tests: continues a checkpoint (an ``update_state`` fork) or
recovers an execution of ``history_graphs.looping``; may SIGKILL itself on ``SPARK_CKPT_TEST_CRASH``.

    python tests/history_worker.py continue|recover STORE_URL GRAPH_ID CHECKPOINT_OR_EXECUTION_ID

Prints one JSON line: the result content and the graph state.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import history_graphs  # noqa: E402

from spark_ckpt import CheckpointConfig, checkpointed  # noqa: E402


async def main() -> None:
    mode, store, graph_id, target = sys.argv[1:5]
    graph = checkpointed(history_graphs.looping(), config=CheckpointConfig(backend=store), graph_id=graph_id)
    if mode == "continue":
        result = await graph.continue_from_checkpoint(target)
    else:
        result = await graph.recover_and_continue(execution_id=target)
    print(json.dumps({"result": result.content, "state": graph.get_state_snapshot(),
                      "execution": graph.last_recovery.execution_id}))


if __name__ == "__main__":
    asyncio.run(main())

"""A worker process for the tests of nodes not safe to re-run: runs or recovers a graph of
``unsafe_node_graphs``, may SIGKILL itself on cue.

    python tests/unsafe_node_worker.py run|recover|recover-allow GRAPH STORE_URL

GRAPH: "line" or "fanout" (``unsafe_node_graphs``), or "stream": the long-running graph of
``long_running_graphs`` with its ``doubler`` not safe to re-run.

Environment: the cues of ``unsafe_node_graphs``; ``SPARK_CKPT_TEST_DURABILITY`` and
``SPARK_CKPT_TEST_INTERVAL`` for the config. Prints one JSON line: the result content and graph state,
or the error a recovery raised.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attrs  # noqa: E402
import unsafe_node_graphs  # noqa: E402

from spark_ckpt import checkpointed  # noqa: E402
from spark_ckpt.errors import SparkCkptError  # noqa: E402


async def main() -> None:
    mode, name, store = sys.argv[1:4]
    config = unsafe_node_graphs.config_for(store, durability=os.environ.get("SPARK_CKPT_TEST_DURABILITY", "sync"),
                                           interval=int(os.environ.get("SPARK_CKPT_TEST_INTERVAL", "1")))
    inputs: object = {"amount": 42}
    if name == "stream":  # long-running: its doubler not safe to re-run
        import long_running_graphs

        config = attrs.evolve(config, unsafe_nodes={"doubler"})
        graph = checkpointed(long_running_graphs.build(), config=config, graph_id="stream-unsafe")
        inputs = long_running_graphs.task(5)
    else:
        graph = checkpointed(unsafe_node_graphs.build(name), config=config, graph_id=f"{name}-unsafe")
    try:
        if mode == "run":
            result = await graph.run(inputs)
        else:
            result = await graph.recover_and_continue(allow_unsafe_rerun=mode == "recover-allow")
    except SparkCkptError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        return
    report = graph.last_recovery
    print(json.dumps({
        "result": result.content, "state": graph.get_state_snapshot(),
        "live": [f"{k}:{i}" for k, i in report.live] if report else [],
    }, default=str))


if __name__ == "__main__":
    asyncio.run(main())

"""A worker that starts a named execution when a go-file appears (for racing starts).

    python tests/named_run_worker.py STORE_URL EXECUTION_ID GO_FILE

Waits until GO_FILE exists, then ``run({"n": 3}, execution_id=EXECUTION_ID)`` of the chain graph
(durability from ``SPARK_CKPT_TEST_DURABILITY``); prints one JSON line: ``{"outcome": "ran"}`` or the
error's type and message.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphs  # noqa: E402

from spark_ckpt import CheckpointConfig, SparkCkptError, checkpointed  # noqa: E402


async def main() -> None:
    store, execution_id, go_file = sys.argv[1:4]
    durability = os.environ.get("SPARK_CKPT_TEST_DURABILITY", "sync")
    graph = checkpointed(graphs.chain(4), config=CheckpointConfig(backend=store, durability=durability),
                         graph_id="raced")
    deadline = time.monotonic() + 60
    while not os.path.exists(go_file) and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        result = await graph.run({"n": 3}, execution_id=execution_id)
        print(json.dumps({"outcome": "ran", "result": result.content}))
    except SparkCkptError as exc:
        print(json.dumps({"outcome": type(exc).__name__, "error": str(exc)}))


if __name__ == "__main__":
    asyncio.run(main())

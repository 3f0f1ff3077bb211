"""A worker that starts a named execution when a go-file appears (for racing starts).

    python tests/named_run_worker.py STORE_URL EXECUTION_ID GO_FILE

Waits until GO_FILE exists, then ``run({"n": 3}, execution_id=EXECUTION_ID)`` of the chain graph
(durability from ``SPARK_CKPT_TEST_DURABILITY``); prints one JSON line: ``{"outcome": "ran"}`` or the
error's type and message. ``SPARK_CKPT_TEST_BARRIER="DIR:N"`` holds each worker after its check that
the name is free until N workers have made it (so they all race to store the start record).
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


def hold_after_name_check(graph, directory: str, count: str) -> None:
    """The first read of the name's head returns only once every racing worker has read it, so all of
    them find the name free and the store alone decides who starts it."""
    planner, real_head = graph._planner, graph._planner.head

    async def head(execution_id):
        found = await real_head(execution_id)
        planner.head = real_head
        open(os.path.join(directory, f"checked-{os.getpid()}"), "w").close()
        until = time.monotonic() + 60
        while len([n for n in os.listdir(directory) if n.startswith("checked-")]) < int(count):
            if time.monotonic() > until:
                raise TimeoutError("the other workers never checked the name")
            await asyncio.sleep(0.005)
        return found

    planner.head = head


async def main() -> None:
    store, execution_id, go_file = sys.argv[1:4]
    durability = os.environ.get("SPARK_CKPT_TEST_DURABILITY", "sync")
    graph = checkpointed(graphs.chain(4), config=CheckpointConfig(backend=store, durability=durability),
                         graph_id="raced")
    deadline = time.monotonic() + 60
    while not os.path.exists(go_file) and time.monotonic() < deadline:
        time.sleep(0.005)
    barrier = os.environ.get("SPARK_CKPT_TEST_BARRIER")  # "DIR:N": all N pass the name check before any starts
    if barrier:
        hold_after_name_check(graph, *barrier.rsplit(":", 1))
    try:
        result = await graph.run({"n": 3}, execution_id=execution_id)
        print(json.dumps({"outcome": "ran", "result": result.content}))
    except SparkCkptError as exc:
        print(json.dumps({"outcome": type(exc).__name__, "error": str(exc)}))


if __name__ == "__main__":
    asyncio.run(main())

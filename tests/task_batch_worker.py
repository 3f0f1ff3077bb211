"""A worker process for scheduled-task crash tests: runs a batch of Spark Tasks through a checkpointed
graph, or finishes the batch after a crash.

    python tests/task_batch_worker.py run|recover STORE_URL

Crash cues (environment): SPARK_CKPT_TEST_CRASH="<node>:<visit>" (tests/graphs.py) inside a node visit;
SPARK_CKPT_TEST_CRASH_AFTER_TASK=<task id> in ``on_task_completed`` of that task. Prints one JSON line:
the batch's results, graph state, callbacks seen, campaign usage.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphs  # noqa: E402
from crash_cues import die  # noqa: E402

from spark_ckpt import CheckpointConfig, checkpointed  # noqa: E402


def tasks() -> list:
    from spark.graphs.tasks import Budget, CampaignInfo, Task
    from spark.nodes.types import NodeMessage

    campaign = CampaignInfo(campaign_id="nightly", budget=Budget(max_tokens=int(os.environ.get("TOKENS", "100"))))
    return [
        Task(task_id="t1", inputs=NodeMessage(content={"n": 1}), campaign=campaign, metadata={"order": 1}),
        Task(task_id="t2", inputs=NodeMessage(content={"n": 2}), campaign=campaign, depends_on=["t1"]),
        Task(task_id="t3", inputs=NodeMessage(content={"n": 3}), campaign=campaign, depends_on=["t2"],
             budget=Budget(max_seconds=30)),
        Task(task_id="t4", inputs=NodeMessage(content={"n": 4}), campaign=campaign, depends_on=["t3"]),
    ]


async def main() -> None:
    from spark.graphs.tasks import TaskScheduler

    mode, store = sys.argv[1:3]
    graph = checkpointed(graphs.chain(3), config=CheckpointConfig(backend=store), graph_id="batch-graph")
    seen: list[str] = []

    def completed(task, outcome):
        seen.append(task.task_id)
        if os.environ.get("SPARK_CKPT_TEST_CRASH_AFTER_TASK") == task.task_id:
            die()

    def usage(task, outcome):
        return {"tokens": 10 * int(task.task_id[1:])}

    callbacks = {"on_task_completed": completed, "usage_provider": usage, "continue_on_error": True}
    if mode == "run":
        result = await graph.run_tasks(TaskScheduler(tasks()), batch_id=os.environ.get("BATCH_ID"), **callbacks)
    elif mode == "recover-default":
        result = await graph.recover_and_continue()
    else:
        result = await graph.recover_tasks(scheduler=TaskScheduler(tasks()), **callbacks)
    state = graph.get_state_snapshot()
    for volatile in ("started_at", "updated_at", "duration_seconds"):  # wall-clock times Spark stamps
        state.get("task_metadata", {}).pop(volatile, None)
    print(json.dumps({
        "completed": {k: v.content for k, v in sorted(result.completed.items())},
        "failed": {k: type(v).__name__ for k, v in sorted(result.failed.items())},
        "state": state,
        "callbacks": seen,
    }, default=str))


if __name__ == "__main__":
    asyncio.run(main())

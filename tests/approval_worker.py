"""A worker process for the approval and human-input tests.

    python tests/approval_worker.py run|recover|reference GRAPH STORE_URL GRAPH_ID

``run`` and ``recover`` print one JSON line: the result, graph state, node outputs and the recovery
report, or ``{"waiting": approval_id}`` when the run stopped at an approval gate, or ``{"error": type}``.
``reference`` is the run that never stops: run, approve the request in the same process, continue.
Crash cues (environment): ``SPARK_CKPT_TEST_CRASH_AFTER_ANSWER=record`` SIGKILLs right after the first
checkpoint stored once the human answered (the in-flight record); ``=visit`` right after the asking
visit completed, before its superstep's record.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import approval_graphs  # noqa: E402
from crash_cues import die  # noqa: E402
from spark.governance.approval import ApprovalPendingError  # noqa: E402

from spark_ckpt import CheckpointConfig, checkpointed, hookimpl  # noqa: E402
from spark_ckpt.plugins import get_plugin_manager  # noqa: E402


def answered() -> bool:
    path = os.environ.get("SPARK_CKPT_TEST_ASKED")
    return bool(path) and os.path.exists(path)


class CrashAfterAnswer:
    def __init__(self, where: str) -> None:
        self.where = where

    @hookimpl
    def spark_ckpt_post_checkpoint(self, event):
        if self.where == "record" and answered():
            die()

    @hookimpl
    def spark_ckpt_post_node(self, event):
        if self.where == "visit" and event.node_key == "ask" and not event.replayed:
            die()


def outcome(graph, result) -> dict:
    report = graph.last_recovery
    return {
        "result": result.content if result is not None else None,
        "state": graph.get_state_snapshot(),
        "outputs": {key: (node.outputs.content if node.outputs is not None else None)
                    for key, node in graph._nodes_by_key.items()},
        "replayed": [f"{k}:{i}" for k, i in report.replayed] if report else [],
        "live": [f"{k}:{i}" for k, i in report.live] if report else [],
    }


async def main() -> None:
    mode, graph_name, store, graph_id = sys.argv[1:5]
    graph = checkpointed(approval_graphs.build(graph_name), config=CheckpointConfig(backend=store), graph_id=graph_id)
    if os.environ.get("SPARK_CKPT_TEST_CRASH_AFTER_ANSWER"):
        get_plugin_manager().register(CrashAfterAnswer(os.environ["SPARK_CKPT_TEST_CRASH_AFTER_ANSWER"]))
    try:
        if mode == "run":
            result = await graph.run({"n": 4})
        elif mode == "recover":
            result = await graph.recover_and_continue()
        else:  # reference: the gate passed without a restart
            try:
                result = await graph.run({"n": 4})
            except ApprovalPendingError as exc:
                await graph.resolve_approval(exc.approval.approval_id, approved=True, reviewer="ref")
                result = await graph.recover_and_continue()
    except ApprovalPendingError as exc:
        print(json.dumps({"waiting": exc.approval.approval_id}))
        return
    except Exception as exc:  # noqa: BLE001 - reported to the test
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        return
    print(json.dumps(outcome(graph, result), default=str))


if __name__ == "__main__":
    asyncio.run(main())

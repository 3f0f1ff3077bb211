"""A demo worker process: ``python -m spark_ckpt.demo worker ...`` runs the workflow, or recovers it.

Worker A runs the checkpointed workflow and kills itself inside a transform pass; worker B builds the
same graph and calls ``recover_and_continue()``. Each records every node visit the checkpoint layer
reports (live or replayed) to a JSON-lines file, and writes its result, graph state and recovery
report to a result file for the driver.

Invariants: a worker imports this very copy of ``spark_ckpt`` (the driver sets ``PYTHONPATH``); a
recovering worker waits for the killed worker's lease (kept short, ``LEASE_TTL_S``) at most ten lease
lifetimes, then fails; the graph is closed however the worker ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import LeaseError
from ..markers import hookimpl
from .workflow import DEMO_INPUT, GRAPH_ID, build_graph, content_of

# A new worker on the same machine takes a dead worker's lease over at once; elsewhere (or if the pid
# was reused) it must wait for the lease to lapse, so the demo keeps leases short.
LEASE_TTL_S = 1.0


class VisitRecorder:
    """Writes every node visit the checkpoint layer reports (live or replayed) to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path

    @hookimpl
    def spark_ckpt_post_node(self, event: Any) -> None:
        line = json.dumps({
            "pid": os.getpid(), "execution": event.execution_id, "node": event.node_key,
            "visit": event.visit_index, "superstep": event.superstep, "replayed": event.replayed,
        })
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


async def _worker(args: argparse.Namespace) -> int:
    from .. import checkpointed
    from ..config import CheckpointConfig
    from ..plugins import get_plugin_manager

    get_plugin_manager().register(VisitRecorder(args.events_file), name="spark-ckpt-demo-recorder")
    config = CheckpointConfig(backend=args.store, lease_ttl_s=LEASE_TTL_S)
    crash_at = args.crash_after - 1 if args.crash_after else None
    graph = checkpointed(build_graph(args.side_file, crash_at), config=config, graph_id=GRAPH_ID)
    try:
        waited = 0.0
        if args.recover:
            started = time.monotonic()
            deadline = started + LEASE_TTL_S * 10
            while True:
                try:
                    result = await graph.recover_and_continue(execution_id=args.execution)
                    break
                except LeaseError:
                    # the killed worker's lease has not lapsed yet
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(LEASE_TTL_S / 4)
                    waited = time.monotonic() - started
            report = graph.last_recovery
            recovery = None if report is None else {
                "from_checkpoint": report.from_checkpoint,
                "replayed": [list(v) for v in report.replayed],
                "live": [list(v) for v in report.live],
                "fell_back": list(report.fell_back),
            }
        else:
            result = await graph.run(DEMO_INPUT)
            recovery = None
        outcome = {
            "result": content_of(result), "state": graph.get_state_snapshot(), "recovery": recovery,
            "lease_wait_s": waited,
        }
        Path(args.result_file).write_text(json.dumps(outcome), encoding="utf-8")
    finally:
        graph.close()
    return 0


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m spark_ckpt.demo worker")
    parser.add_argument("--store", required=True)
    parser.add_argument("--side-file", required=True)
    parser.add_argument("--events-file", required=True)
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--crash-after", type=int, default=None)
    parser.add_argument("--recover", action="store_true")
    parser.add_argument("--execution", default=None)
    return asyncio.run(_worker(parser.parse_args(argv)))


"""Runs or recovers a ``large_value_graphs`` graph in a worker process.

    python tests/large_value_worker.py run|recover STORE STEPS STALL_AT MARKER
    python tests/large_value_worker.py runs STORE STEPS RUNS KEEP   (RUNS runs, retention_count KEEP)
    python tests/large_value_worker.py export SOURCE DESTINATION AFTER MARKER

``run`` stalls (until SIGKILL) when the count reaches STALL_AT; ``runs`` counts STEPS further in each
run and prints each run's ``n``; ``export`` copies the SQLite store SOURCE into the SQLite store
DESTINATION and writes MARKER once AFTER checkpoints are copied (it goes on: the kill lands where it
lands).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import large_value_graphs  # noqa: E402


async def _runs(graph, runs: int, steps: int) -> None:
    for i in range(runs):  # each run counts ``steps`` further (Spark keeps the state between runs)
        large_value_graphs.Settings.steps = steps * (i + 1)
        result = await graph.run({"go": 1})
        print(result.content["n"], flush=True)


if __name__ == "__main__":
    action, store, steps = sys.argv[1:4]
    if action == "export":
        from spark_ckpt.backends.sqlite import SqliteBackend
        from spark_ckpt.transfer import export_checkpoints

        after, marker = int(sys.argv[4]), Path(sys.argv[5])

        def progress(done: int, _total: int) -> None:
            if done == after:
                marker.write_text(str(done))

        export_checkpoints(SqliteBackend(store), SqliteBackend(steps), progress=progress)
        time.sleep(3600)  # (killed here at the latest)
    elif action == "runs":
        runs, keep = int(sys.argv[4]), int(sys.argv[5])
        graph = large_value_graphs.build(store, int(steps), retention_count=keep)
        asyncio.run(_runs(graph, runs, int(steps)))
    else:
        stall_at, marker = sys.argv[4:6]
        large_value_graphs.Settings.stall_at = int(stall_at)
        large_value_graphs.Settings.marker = Path(marker)
        graph = large_value_graphs.build(store, int(steps))
        asyncio.run(graph.run({"go": 1}) if action == "run" else graph.recover_and_continue())

"""A worker process that checkpoints a test graph into a backend *object* it builds itself.

    python tests/backend_object_worker.py run|recover sqlite|file LOCATION GRAPH_ID

``sqlite``: ``SQLiteBackend(db_path=LOCATION, table_name="graph_checkpoints")``; ``file``:
``FileBackend(path=LOCATION, format="json", compression=True)``. The graph is ``graphs.chain(5)``
(crash cues as in ``crash_worker.py``). Prints one JSON line: result content, graph state, and the
recovery report.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphs  # noqa: E402

from spark_ckpt import CheckpointConfig, checkpointed  # noqa: E402
from spark_ckpt.backends import FileBackend, SQLiteBackend  # noqa: E402

TABLE_NAME = "graph_checkpoints"


def backend_object(kind: str, location: str):
    if kind == "sqlite":
        return SQLiteBackend(db_path=location, table_name=TABLE_NAME)
    return FileBackend(path=location, format="json", compression=True)


async def main() -> None:
    mode, kind, location, graph_id = sys.argv[1:5]
    backend = backend_object(kind, location)
    graph = checkpointed(graphs.chain(5), config=CheckpointConfig(backend=backend), graph_id=graph_id)
    result = await (graph.run({}) if mode == "run" else graph.recover_and_continue())
    report = graph.last_recovery
    graph.close()
    print(json.dumps({
        "result": result.content,
        "state": graph.get_state_snapshot(),
        "replayed": [f"{k}:{i}" for k, i in report.replayed] if report else [],
        "live": [f"{k}:{i}" for k, i in report.live] if report else [],
        "checkpoints": len(backend.list_checkpoints(graph_id=graph_id)),  # still open: the object is ours
    }, default=str))
    backend.close()


if __name__ == "__main__":
    asyncio.run(main())

"""A graph holding large values in its state, for the tests of values stored once (and their workers).

``count`` counts ``n`` up; ``edit`` changes the large mutable ``doc`` every third count and appends to
the large ``log`` list at every one; the 1 MB string ``blob`` is never touched. ``count`` -> ``edit``
-> ``count`` until ``n`` reaches ``steps``. ``stall_at`` makes the visit of ``count`` that reaches it
write ``marker`` and block until the process is killed.
"""

from __future__ import annotations

import time
from pathlib import Path

from spark.graphs import Graph
from spark.nodes import Node

from spark_ckpt import CheckpointConfig, checkpointed

BLOB = "".join(chr(0x20 + i % 90) for i in range(1 << 20))  # 1 MB, never touched
DOC_ROWS = 60  # ~120 KB of JSON


class Settings:
    steps = 0
    stall_at: int | None = None
    marker: Path | None = None


def initial_state() -> dict:
    return {
        "blob": BLOB,
        "doc": {"rows": [{"i": i, "text": "d" * 2000, "version": 0} for i in range(DOC_ROWS)]},
        "log": [{"n": 0, "text": "l" * 2000} for _ in range(40)],  # ~80 KB, one item more per count
    }


class Count(Node):
    async def process(self, context):
        n = await context.graph_state.get("n", 0) + 1
        await context.graph_state.set("n", n)
        if n == Settings.stall_at and Settings.marker is not None:
            Settings.marker.write_text(str(n))
            time.sleep(3600)
        return {"n": n, "done": n >= Settings.steps}


class Edit(Node):
    async def process(self, context):
        n = context.inputs.content["n"]
        log = await context.graph_state.get("log")
        await context.graph_state.set("log", log + [{"n": n, "text": "l" * 2000}])
        if n % 3 == 0:
            doc = await context.graph_state.get("doc")
            rows = [dict(row) for row in doc["rows"]]
            rows[n % DOC_ROWS]["version"] = n
            await context.graph_state.set("doc", {"rows": rows})
        return {"n": n, "done": context.inputs.content["done"]}


def build(store: Path | str, steps: int, **config):
    """The graph checkpointed to the SQLite file ``store`` (``config``: more ``CheckpointConfig``)."""
    Settings.steps = steps
    count, edit = Count(id="count"), Edit(id="edit")
    count >> edit
    edit.on(done=False) >> count
    config.setdefault("interval", 1)
    config.setdefault("retention_count", None)
    config.setdefault("backend", "sqlite")
    return checkpointed(Graph(start=count, initial_state=initial_state()), config=CheckpointConfig(
        path=str(store), strategy="iteration", **config), graph_id="large-values")

"""End to end with encryption on: a real graph (with an agent node) run, recovered, saved and
exported; the sentinel written into graph state and into the agent's messages is found nowhere in
any stored or exported byte, and everything still reads back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from spark.agents import Agent, AgentConfig
from spark.graphs import Graph
from spark.models.echo import EchoModel
from spark.nodes import Node

from spark_ckpt import CheckpointConfig, checkpointed, open_backend
from spark_ckpt.codec.crypto import new_key
from spark_ckpt.errors import MissingKeyError, PlaintextRefusedError
from spark_ckpt.transfer import export_checkpoints

SENTINEL = "SENTINEL-e2e-91c4-do-not-store"
KEYS = {"k1": new_key()}


class Intake(Node):
    async def process(self, context):
        await context.graph_state.set("customer_note", f"card on file: {SENTINEL}")
        return {"text": f"summarise the note {SENTINEL}"}


def build() -> Graph:
    intake = Intake(id="intake")
    agent = Agent(AgentConfig(model=EchoModel(), name="summariser", prompt_template="{{ text }}"))
    intake >> agent
    return Graph(start=intake)


def every_byte(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_sentinel_is_nowhere_in_stored_or_exported_bytes(tmp_path) -> None:
    store = tmp_path / "store"
    config = CheckpointConfig(backend="sqlite", path=str(store / "ckpt.db"), encryption_keys=KEYS, active_key="k1")
    graph = checkpointed(build(), config=config, graph_id="secure")
    result = asyncio.run(graph.run({}))
    assert SENTINEL in str(result.content)  # the run itself saw it
    last = graph.get_last_checkpoint()
    assert SENTINEL in last.graph_state["customer_note"]
    assert SENTINEL in str(last.node_extras["summariser"]["memory"]["messages"])

    (tmp_path / "exported").mkdir()
    saved = graph.save_checkpoint(tmp_path / "exported" / "saved.ckpt")
    exported = open_backend(f"file://{tmp_path}/exported/files")
    assert export_checkpoints(graph.backend, exported, graph_id="secure") == len(graph.list_checkpoints())
    exported.close()

    for root in (store, tmp_path / "exported"):
        raw = every_byte(root)
        assert raw and SENTINEL.encode() not in raw and SENTINEL[:14].encode() not in raw, root

    # it all reads back with the key, from the store, the saved file and the exported copy
    fresh = checkpointed(build(), config=CheckpointConfig(backend=f"file://{tmp_path}/exported/files",
                                                          encryption_keys=KEYS), graph_id="secure")
    assert fresh.get_last_checkpoint().graph_state == last.graph_state
    assert fresh.load_from_checkpoint(saved).node_extras == last.node_extras


def test_without_the_key_or_without_encryption_nothing_is_read(tmp_path) -> None:
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "c.db"), encryption_keys=KEYS)
    asyncio.run(checkpointed(build(), config=config, graph_id="secure").run({}))
    keyless = checkpointed(build(), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "c.db")),
                           graph_id="secure")
    with pytest.raises(MissingKeyError):
        keyless.get_last_checkpoint()
    # the other way round: a plaintext store opened with encryption configured is refused (fail closed)
    asyncio.run(checkpointed(build(), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "p.db")),
                             graph_id="plain").run({}))
    strict = checkpointed(build(), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "p.db"),
                                                           encryption_keys=KEYS), graph_id="plain")
    with pytest.raises(PlaintextRefusedError):
        strict.get_last_checkpoint()

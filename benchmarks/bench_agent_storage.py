"""Storage growth of a checkpointed agent over a long conversation.

    python benchmarks/bench_agent_storage.py              # 500 turns
    python benchmarks/bench_agent_storage.py --turns 100

Every turn is one ``CheckpointedAgent.run()`` (so the agent is checkpointed after each turn) against a
SQLite store, with an offline model whose replies are 300-900 characters; every 10th turn calls a tool.
Reported, for an unbounded memory (every message kept) and for Spark's default rolling window of 10:

* raw: bytes of every message the conversation produced (compact JSON), each counted once;
* stored: bytes of all records left in the store at the end (what retention and recovery work on);
* written: bytes of every record ever written, including the per-call journal records that are
  deleted once their run completed;
* full snapshot per turn: what storing ``checkpoint()`` after every turn would take (the quadratic
  baseline spark-ckpt avoids).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from spark.agents import Agent, AgentConfig
from spark.agents.memory import MemoryConfig
from spark.models.base import Model
from spark.tools import tool

from spark_ckpt import CheckpointConfig, checkpointed

WORDS = "agent checkpoint journal replay delta snapshot sqlite tool model message budget token cost".split()


@tool
def lookup(key: str) -> str:
    """Look something up.

    Args:
        key: what to look up
    """
    return f"value of {key}: " + " ".join(random.Random(key).choices(WORDS, k=20))


class ChattyModel(Model):
    """Offline: 300-900 character replies; asks for ``lookup`` on every 10th user turn."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random(7)

    def update_config(self, **model_config: Any) -> None:
        pass

    def get_config(self) -> dict[str, Any]:
        return {"model_id": "gpt-4o-mini"}

    async def get_text(self, messages, system_prompt=None, tool_specs=None, tool_choice=None, **kwargs):
        last = messages[-1]
        text = " ".join(b.get("text", "") for b in last["content"] if isinstance(b, dict))
        usage = {"input_tokens": 40 * len(messages), "output_tokens": 150}
        if text.startswith("[tool]"):
            return {"role": "assistant", "content": "", "stop_reason": "tool_use", "usage": usage,
                    "tool_calls": [{"id": "t1", "type": "function",
                                    "function": {"name": "lookup", "arguments": json.dumps({"key": text[:20]})}}]}
        reply = " ".join(self.rng.choices(WORDS, k=self.rng.randint(40, 110)))
        return {"role": "assistant", "content": reply, "stop_reason": "end_turn", "usage": usage}

    async def get_json(self, *args: Any, **kwargs: Any):
        raise NotImplementedError


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


async def measure(turns: int, window: int, workdir: Path) -> dict[str, Any]:
    config = AgentConfig(model=ChattyModel(), name="chat", tools=[lookup], memory_config=MemoryConfig(window=window))
    agent = checkpointed(
        Agent(config), config=CheckpointConfig(backend="sqlite", path=str(workdir / f"w{window}.db")), agent_id="chat"
    )
    written = {"bytes": 0, "records": 0}
    backend = agent.backend
    put = backend.put

    def counting_put(header, blob, *, lease=None):
        written["bytes"] += len(blob)
        written["records"] += 1
        return put(header, blob, lease=lease)

    backend.put = counting_put  # type: ignore[method-assign]
    rng = random.Random(1)
    raw = 0
    full_per_turn = 0
    seen = 0
    for turn in range(turns):
        prefix = "[tool] " if turn % 10 == 9 else ""
        await agent.run(prefix + f"turn {turn}: " + " ".join(rng.choices(WORDS, k=rng.randint(15, 60))))
        messages = agent.agent.messages
        # each new message once: with a rolling window, the newest two are this turn's
        new = messages[-2:] if window < 10_000 else messages[seen:]
        raw += sum(_size(m) for m in new)
        seen = len(messages)
        full_per_turn += _size(agent.checkpoint())
    stored = sum(h.size for h in agent.list_checkpoints())
    agent.close()
    return {
        "turns": turns, "window": window, "raw": raw, "stored": stored, "written": written["bytes"],
        "full_per_turn": full_per_turn,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [asyncio.run(measure(args.turns, window, Path(tmp))) for window in (100_000, 10)]
    print("| memory | turns | raw messages | stored | stored/raw | written | written/raw | full snapshot per turn | full/raw |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        memory = "unbounded" if r["window"] >= 10_000 else f"window {r['window']}"
        print(
            f"| {memory} | {r['turns']} | {r['raw']:,} B | {r['stored']:,} B | {r['stored'] / r['raw']:.2f}x "
            f"| {r['written']:,} B | {r['written'] / r['raw']:.2f}x | {r['full_per_turn']:,} B "
            f"| {r['full_per_turn'] / r['raw']:.1f}x |"
        )


if __name__ == "__main__":
    main()

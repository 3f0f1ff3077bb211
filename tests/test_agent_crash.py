"""Real SIGKILL of an agent worker process at exact points of its tool loop, then recovery in a new
process: no completed LLM or tool call is paid twice, and the outcome equals an uninterrupted run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agent_workers.scripted import ScriptedModel, charge, step

pytestmark = pytest.mark.slow

WORKER = Path(__file__).parent / "agent_workers" / "agent_worker.py"


def worker(tmp_path: Path, *args: str, kill: str | None = None, counter: str) -> tuple[int, Any, list[str]]:
    """Run the worker; return (exit code, its JSON output, the real calls it made)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_")}
    env["SPARK_CKPT_DISABLE_PLUGINS"] = "1"
    counter_path = tmp_path / counter
    env["SPARK_CKPT_TEST_COUNTER"] = str(counter_path)
    if kill:
        env["SPARK_CKPT_TEST_KILL"] = f"{kill}:{tmp_path / 'killed'}"
    proc = subprocess.run(
        [sys.executable, str(WORKER), *args], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    calls = counter_path.read_text().split() if counter_path.exists() else []
    output = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"worker failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return proc.returncode, output, calls


def reference(task: str, parallel: int = 1, tool_name: str = "step") -> dict[str, Any]:
    """What an uninterrupted run produces (in this process, memory backend)."""
    from spark.agents import Agent, AgentConfig

    from spark_ckpt import CheckpointConfig, checkpointed

    config = AgentConfig(
        model=ScriptedModel(parallel=parallel, tool_name=tool_name), name="bot", tools=[step, charge],
        parallel_tool_execution=parallel > 1,
    )
    agent = checkpointed(Agent(config), config=CheckpointConfig(backend="memory"), agent_id="bot")
    result = asyncio.run(agent.run(task))
    snapshot = agent.checkpoint()
    return {
        "result": result.content,
        "messages": snapshot["memory"]["messages"],
        "costs": [[c["model_id"], c["input_tokens"], c["output_tokens"]] for c in snapshot["cost_tracking"]["calls"]],
        "tool_outputs": sorted(t["output"] for t in snapshot["state"]["tool_traces"]),
    }


def same_outcome(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["result"] == want["result"]
    assert got["messages"] == want["messages"]
    assert got["costs"] == want["costs"]
    assert sorted(got["tool_outputs"]) == want["tool_outputs"]


@pytest.mark.parametrize(
    ("kill", "first_calls", "recovery_calls", "replayed"),
    [
        # killed inside the 2nd tool call: only that tool runs again
        ("tool:2", ["llm", "tool:step", "llm"], ["tool:step", "llm", "tool:step", "llm"], 3),
        # killed after the 2nd tool result was journaled, before the 3rd LLM call
        ("before_llm:3", ["llm", "tool:step", "llm", "tool:step"], ["llm", "tool:step", "llm"], 4),
        # killed right after the 2nd LLM response was journaled: it is not paid again
        ("after_llm:2", ["llm", "tool:step", "llm"], ["tool:step", "llm", "tool:step", "llm"], 3),
    ],
    ids=["inside-tool", "between-llm-calls", "after-llm-response"],
)
def test_sigkill_then_recover_pays_no_call_twice(tmp_path, kill, first_calls, recovery_calls, replayed):
    """A SIGKILLed run is finished by a new process that replays every journaled call."""
    code, _, calls = worker(tmp_path, "run", "db.sqlite", "task:3", kill=kill, counter="first")
    assert code == -signal.SIGKILL and (tmp_path / "killed").exists()
    assert calls == first_calls
    code, out, calls = worker(tmp_path, "recover", "db.sqlite", "task:3", counter="second")
    assert code == 0
    assert calls == recovery_calls
    assert out["replayed"] == replayed
    same_outcome(out, reference("task:3"))
    # the run is finished: a second recovery finds nothing to do and pays nothing
    _, out, calls = worker(tmp_path, "recover", "db.sqlite", "task:3", counter="third")
    assert out["error"] == "NothingToRecoverError" and calls == []


def test_sigkill_during_parallel_tools(tmp_path):
    """With parallel tool execution, tool results completed before the kill are replayed by id."""
    code, _, calls = worker(tmp_path, "run", "db.sqlite", "task:6", "3", kill="tool:2", counter="first")
    assert code == -signal.SIGKILL
    assert calls == ["llm", "tool:step"]
    code, out, calls = worker(tmp_path, "recover", "db.sqlite", "task:6", "3", counter="second")
    assert calls.count("llm") == 2 and calls.count("tool:step") == 5
    same_outcome(out, reference("task:6", parallel=3))


def test_unsafe_tool_in_flight_is_reported_not_repeated(tmp_path):
    """A tool marked not safe to re-run that was killed mid-call makes recovery raise
    UnsafeToRetryError naming it; only an explicit allow_unsafe_rerun runs it again."""
    code, _, calls = worker(tmp_path, "run", "db.sqlite", "task:3", "1", "unsafe", kill="tool:2", counter="first")
    assert code == -signal.SIGKILL and calls == ["llm", "tool:charge", "llm"]
    _, out, calls = worker(tmp_path, "recover", "db.sqlite", "task:3", "1", "unsafe", counter="second")
    assert out["error"] == "UnsafeToRetryError"
    assert "'charge'" in out["message"] and "call-1" in out["message"]
    assert calls == []
    _, out, calls = worker(tmp_path, "recover", "db.sqlite", "task:3", "1", "unsafe", "allow", counter="third")
    assert calls == ["tool:charge", "llm", "tool:charge", "llm"]
    same_outcome(out, reference("task:3", tool_name="charge"))


@pytest.mark.parametrize("mode", ["graph", "graph-start"], ids=["after-another-node", "start-node"])
def test_sigkill_of_an_agent_inside_a_checkpointed_graph(tmp_path, mode):
    """An agent node of a checkpointed graph journals its calls through the graph's visit: after a
    SIGKILL inside a tool, graph recovery replays them. As the start node, the agent runs in the very
    first superstep and its calls are journaled on top of the start record."""
    code, _, calls = worker(tmp_path, f"{mode}-run", "db.sqlite", "task:3", kill="tool:2", counter="first")
    assert code == -signal.SIGKILL and calls == ["llm", "tool:step", "llm"]
    code, out, calls = worker(tmp_path, f"{mode}-recover", "db.sqlite", "task:3", counter="second")
    assert code == 0
    assert calls == ["tool:step", "llm", "tool:step", "llm"]
    same_outcome(out, reference("task:3"))


def test_unsafe_tool_in_flight_inside_a_graph(tmp_path):
    """Inside a graph too, a not-safe-to-re-run tool in flight at the crash is reported, not repeated;
    recover_and_continue(allow_unsafe_rerun=True) runs it again once the user has checked it."""
    code, _, calls = worker(tmp_path, "graph-run", "db.sqlite", "task:3", "1", "unsafe", kill="tool:2", counter="first")
    assert code == -signal.SIGKILL and calls == ["llm", "tool:charge", "llm"]
    _, out, calls = worker(tmp_path, "graph-recover", "db.sqlite", "task:3", "1", "unsafe", counter="second")
    assert out["error"] == "UnsafeToRetryError" and "'charge'" in out["message"]
    assert calls == []
    _, out, calls = worker(tmp_path, "graph-recover", "db.sqlite", "task:3", "1", "unsafe", "allow", counter="third")
    assert calls == ["tool:charge", "llm", "tool:charge", "llm"]
    same_outcome(out, reference("task:3", tool_name="charge"))


def test_sigkill_deep_in_a_long_agent_visit_inside_a_graph(tmp_path):
    """An agent node making 30 tool calls in one visit stores its in-flight journal as per-call deltas;
    killed inside the 25th tool, recovery rebuilds the whole journal from that chain and pays only
    the rest."""
    code, _, calls = worker(tmp_path, "graph-run", "db.sqlite", "task:30", kill="tool:25", counter="first")
    assert code == -signal.SIGKILL
    assert calls == ["llm", "tool:step"] * 24 + ["llm"]
    code, out, calls = worker(tmp_path, "graph-recover", "db.sqlite", "task:30", counter="second")
    assert code == 0
    assert calls == ["tool:step", "llm"] * 6
    same_outcome(out, reference("task:30"))

"""Human input collected by a node (Spark's ``node.human_policy``) journaled the moment it is given, so
a recovery never asks the human twice.

Spark calls the policy inside ``do()`` after ``process()`` (``_maybe_collect_human_input``): it returns
the visit's result updated with the answer. A completed visit replays its recorded output, so the policy
is not called again; but a visit whose superstep had not reached a boundary record when the process died
runs again. So each node instance's ``human_policy`` is wrapped (at the start of every run, also a
policy set after wrapping): the first time, the real policy is asked and what it returned is stored
durably as the visit's in-flight journal (``GraphRunner.persist_inflight``) before the visit goes on;
when the same visit runs again after a restart, the journaled answer is returned and the human is not
asked.

Invariants: the answer is durable before the visit uses it; the journaled answer is used only by the very
visit (node key and visit index) that was given it; a node whose in-flight journal belongs to an adapter
(an agent) with a human policy is refused up front (``UnsupportedFeatureError``), as both would claim it.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from ..errors import UnsupportedFeatureError
from .graph_state import dump_message, load_message
from .runtime import current_visit

if TYPE_CHECKING:
    from .graph_run import GraphRunner

#: key of the in-flight journal data holding the answer
INFLIGHT_KEY = "human_input"


def prepare_run(runner: GraphRunner) -> None:
    """Wrap every node's ``human_policy`` not wrapped yet (see the module docstring)."""
    adapter_keys = runner.owner._adapter_keys
    for key, node in runner.nodes.items():
        policy = getattr(node, "human_policy", None)
        if policy is None or isinstance(policy, JournaledHumanPolicy):
            continue
        if key in adapter_keys:
            raise UnsupportedFeatureError(
                f"node {key!r} is an agent with a human_policy: its in-flight journal holds the agent's calls, so "
                "the human's answer could not be journaled next to them yet. Nothing was run or stored; collect "
                "the human input in a separate node"
            )
        node.human_policy = JournaledHumanPolicy(policy, key)


class JournaledHumanPolicy:
    """A node's human policy whose answers are journaled per visit (see the module docstring)."""

    def __init__(self, policy: Any, node_key: str) -> None:
        self.policy = policy
        self.node_key = node_key

    async def apply(self, node: Any, context: Any, result: Any) -> Any:
        visit = current_visit()
        if visit is None or visit.persist_inflight is None or visit.node_key != self.node_key:
            return await self._ask(node, context, result)  # outside a checkpointed run: as Spark does
        recovered = visit.recovered_inflight
        if isinstance(recovered, dict) and INFLIGHT_KEY in recovered:
            return _load(recovered[INFLIGHT_KEY])  # given before the restart: not asked again
        answer = await self._ask(node, context, result)
        # next to what the visit journaled in flight before (a subgraph's inner record), not over it
        await visit.persist_inflight({**_inflight_so_far(visit), INFLIGHT_KEY: _dump(answer)})
        return answer

    async def _ask(self, node: Any, context: Any, result: Any) -> Any:
        handler = getattr(self.policy, "apply", None) or self.policy
        value = handler(node, context, result)
        return await value if inspect.isawaitable(value) else value

    def __getattr__(self, name: str) -> Any:  # the wrapped policy's own attributes stay reachable
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)


def _dump(answer: Any) -> dict[str, Any]:
    if answer is None:
        return {"kind": "none"}
    if hasattr(answer, "model_dump") and type(answer).__name__ == "NodeMessage":
        return {"kind": "message", "value": dump_message(answer)}
    return {"kind": "data", "value": answer}


def _load(stored: dict[str, Any]) -> Any:
    kind = stored.get("kind")
    if kind == "none":
        return None
    if kind == "message":
        return load_message(stored["value"])
    return stored.get("value")


def _inflight_so_far(visit: Any) -> dict[str, Any]:
    """What this visit stored in flight before in this process (or recovered), as a dict."""
    owner = visit.extras.get("graph")
    ex = getattr(getattr(owner, "_runner", None), "active", None)
    entry = ex.journal.inflight.get(visit.node_key) if ex is not None else None
    if isinstance(entry, dict) and entry.get("visit_index") == visit.visit_index and isinstance(entry.get("data"), dict):
        return dict(entry["data"])
    return {}

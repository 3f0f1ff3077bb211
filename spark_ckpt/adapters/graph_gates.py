"""Spark's approval gates across a restart: a run stopped by ``ApprovalPendingError`` is stored as
``waiting``, and continuing it passes the gate once the request was approved (no Spark code changes).

Spark evaluates its policy engine before the task and before each node visit; REQUIRE_APPROVAL makes it
submit an ``ApprovalRequest`` (kept in graph state) and raise ``ApprovalPendingError``, every time: Spark
itself has no way past a gate. Three instance-level wrappers provide one:

* the graph's policy engine ``evaluate``: a REQUIRE_APPROVAL for a gate whose request (same stable
  identity) is APPROVED becomes ALLOW, REJECTED becomes DENY (Spark raises ``PolicyViolationError``),
  PENDING stays (Spark raises again). A gate's identity is the execution, the action and, for a node,
  spark-ckpt's node key and visit index (Spark's graph and node ids are random per process). A gate
  evaluated for a journaled visit (or the task gate of a run that has visits) is a replay: it was passed
  before, so it is ALLOW and its decision is not recorded again;
* the approval manager's ``submit_request``: stamps the gate's identity into the request's metadata
  (``approvals.GATE_KEY``); for a gate that already has a PENDING request it returns that request
  (the same id again, no duplicate);
* the graph's ``_record_policy_decision``: skipped for replayed evaluations, so Spark's
  ``policy_events`` timeline after a recovery is the record's plus the live evaluations, as in a run
  that never stopped.

A resolution made through Spark's own approval manager on the live graph (after
``restore_from_checkpoint``) is stored before recovery restores the waiting record over it
(``store_resolutions_made_in_spark``).

Invariants: the waiting record is built on the last boundary stored (the stopped superstep's partial
effects are not kept) with Spark's approval requests as Spark stored them in graph state; the
``ApprovalPendingError`` reaches the caller unchanged; nothing here runs for a graph without a policy.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

from .. import approvals
from ..codec import to_data
from ..errors import UnsupportedFeatureError
from ..model import WAITING

if TYPE_CHECKING:
    from .graph import CheckpointedGraph
    from .graph_run import Execution, GraphRunner

log = logging.getLogger("spark_ckpt.graph")

TASK_GATE = "graph:execute_task"
NODE_GATE = "node:execute"


def is_approval_pending(exc: BaseException) -> bool:
    return type(exc).__name__ == "ApprovalPendingError" and hasattr(exc, "approval")


class ApprovalGates:
    """The gate wrappers of one checkpointed graph (see the module docstring)."""

    def __init__(self, runner: GraphRunner) -> None:
        self.runner = runner
        self.graph = runner.graph
        #: the gate a REQUIRE_APPROVAL was just returned for: its request is submitted next
        self._gate: dict[str, Any] | None = None
        #: the evaluation just made was a replay: Spark's recording of it is skipped
        self._replayed = False

    # -- set-up, at the start of every run (Spark may build its engine late or have it replaced) ------
    def prepare_run(self) -> None:
        graph = self.graph
        engine = getattr(graph, "_policy_engine", None)
        if engine is None:
            return
        if not getattr(graph, "_state_enabled", True):
            raise UnsupportedFeatureError(
                "this graph has a policy engine but graph state disabled (enable_graph_state=False): Spark then "
                "keeps approval requests in process memory only, so a run stopped at an approval gate could not "
                "be continued elsewhere. Nothing was run or stored; enable graph state"
            )
        if getattr(engine.evaluate, "_spark_ckpt_gates", None) is not self:
            engine.evaluate = self._evaluate_wrapper(engine.evaluate)
        manager = getattr(graph, "_approval_manager", None)
        if manager is not None and getattr(manager.submit_request, "_spark_ckpt_gates", None) is not self:
            manager.submit_request = self._submit_wrapper(manager.submit_request)
        record = getattr(graph, "_record_policy_decision", None)
        if record is not None and getattr(record, "_spark_ckpt_gates", None) is not self:
            graph._record_policy_decision = self._record_wrapper(record)

    # -- identity ------------------------------------------------------------------------------------
    def _gate_of(self, request: Any, ex: Execution) -> tuple[dict[str, Any] | None, bool]:
        """``(identity, replayed)`` of the gate ``request`` asks about; ``(None, False)`` for requests
        that are not the graph's own task or node gates (an agent's tool policy, say)."""
        action = getattr(request, "action", None)
        context = getattr(request, "context", None) or {}
        journal = ex.journal
        if action == TASK_GATE:
            return {"execution_id": ex.execution_id, "action": action}, journal.resumed_through >= 0
        if action != NODE_GATE:
            return None, False
        node_id = (context.get("node") or {}).get("id")
        key = next((k for k, n in self.runner.nodes.items() if getattr(n, "id", None) == node_id), None)
        if key is None:
            return None, False
        index = journal.counts.get(key, 0)
        replayed = (key, index) in journal.replay
        return {"execution_id": ex.execution_id, "action": action, "node_key": key, "visit_index": index}, replayed

    def _requests(self) -> list[dict[str, Any]]:
        manager = getattr(self.graph, "_approval_manager", None)
        key = getattr(manager, "_storage_key", approvals.DEFAULT_STATE_KEY)
        raw = self.graph.state.get_raw().get(key) or []
        return [item.model_dump() if hasattr(item, "model_dump") else item for item in raw]

    def _request_for(self, gate: dict[str, Any]) -> dict[str, Any] | None:
        """The newest request of ``gate`` (a rejected one is newer than nothing)."""
        found = None
        for request in self._requests():
            if isinstance(request, dict) and (request.get("metadata") or {}).get(approvals.GATE_KEY) == gate:
                found = request
        return found

    # -- the wrappers ----------------------------------------------------------------------------------
    def _evaluate_wrapper(self, original: Any) -> Any:
        def evaluate(request: Any) -> Any:
            decision = original(request)
            ex = self.runner.active
            self._replayed, self._gate = False, None
            if ex is None:
                return decision
            gate, replayed = self._gate_of(request, ex)
            if gate is None:
                return decision
            effect = _effect(decision)
            if replayed:
                self._replayed = True  # passed before (the journal shows it): not recorded again
                return _with_effect(decision, "allow", "replayed: passed before the restart") \
                    if effect == "require_approval" else decision
            if effect != "require_approval":
                return decision
            request_data = self._request_for(gate)
            status = approvals.status_of(request_data) if request_data is not None else None
            if status == approvals.APPROVED:
                return _with_effect(decision, "allow", f"approved: {request_data['approval_id']}",
                                    approval_id=request_data["approval_id"])
            if status == approvals.REJECTED:
                return _with_effect(decision, "deny", f"rejected: {request_data['approval_id']}",
                                    approval_id=request_data["approval_id"])
            self._gate = gate  # Spark submits its request next
            return decision

        evaluate._spark_ckpt_gates = self  # type: ignore[attr-defined]
        evaluate.__wrapped__ = original  # type: ignore[attr-defined]
        return evaluate

    def _submit_wrapper(self, original: Any) -> Any:
        async def submit_request(**kwargs: Any) -> Any:
            gate, self._gate = self._gate, None
            if gate is None:
                return await original(**kwargs)
            existing = self._request_for(gate)
            if existing is not None and approvals.status_of(existing) == approvals.PENDING:
                from spark.governance.approval import ApprovalRequest

                return ApprovalRequest.model_validate(existing)  # the same request again
            metadata = dict(kwargs.get("metadata") or {})
            metadata[approvals.GATE_KEY] = gate
            return await original(**{**kwargs, "metadata": metadata})

        submit_request._spark_ckpt_gates = self  # type: ignore[attr-defined]
        submit_request.__wrapped__ = original  # type: ignore[attr-defined]
        return submit_request

    def _record_wrapper(self, original: Any) -> Any:
        async def record_policy_decision(decision: Any, request: Any) -> Any:
            if self._replayed:
                self._replayed = False
                return None
            return await original(decision, request)

        record_policy_decision._spark_ckpt_gates = self  # type: ignore[attr-defined]
        record_policy_decision.__wrapped__ = original  # type: ignore[attr-defined]
        return record_policy_decision

    # -- the waiting record --------------------------------------------------------------------------
    async def record_waiting(self, ex: Execution, exc: BaseException) -> None:
        """Store a ``waiting`` record on the last boundary stored, holding Spark's approval requests;
        never masks ``exc``."""
        runner, writer = self.runner, ex.writer
        try:
            await writer.flush()
            if writer.last_blob is None:
                log.warning("execution %s stopped at an approval gate before any record was stored", ex.execution_id)
                return
            manager = getattr(self.graph, "_approval_manager", None)
            key = getattr(manager, "_storage_key", approvals.DEFAULT_STATE_KEY)
            requests = to_data(copy.deepcopy(self._requests()))
            approval_id = getattr(exc.approval, "approval_id", None)  # type: ignore[attr-defined]
            data = runner.on_boundary(ex, status=WAITING, failure=None, graph_state={key: requests})
            data["extras"] = {**(data.get("extras") or {}),
                              approvals.EXTRAS_KEY: {"state_key": key, "pending": [approval_id]}}
            await runner.store(ex, data, wait=True)
            await writer.flush()
            log.info("execution %s waits for approval %s", ex.execution_id, approval_id)
        except BaseException:
            log.exception("could not record that execution %s waits for an approval", ex.execution_id)


def _effect(decision: Any) -> str:
    effect = getattr(decision, "effect", None)
    return str(getattr(effect, "value", effect))


def _with_effect(decision: Any, effect: str, reason: str, **metadata: Any) -> Any:
    from spark.governance.policy import PolicyEffect

    return decision.model_copy(update={
        "effect": PolicyEffect(effect), "reason": reason, "metadata": {**dict(decision.metadata), **metadata},
    })


async def store_resolutions_made_in_spark(owner: CheckpointedGraph, execution_id: str) -> None:
    """Approvals resolved through Spark's own approval manager on this graph (after
    ``restore_from_checkpoint``, e.g. ``await graph.graph._approval_manager.resolve_request(...)``):
    stored as ``resolve_approval`` would, before recovery restores the waiting record's state over
    them. Only requests the waiting execution still holds as pending are taken."""
    # the live graph first (in memory): most recoveries find nothing resolved there and read nothing more
    key = getattr(getattr(owner.graph, "_approval_manager", None), "_storage_key", approvals.DEFAULT_STATE_KEY)
    live = owner.graph.state.get_raw().get(key) or []
    resolved = {}
    for request in live:
        data = request if isinstance(request, dict) else getattr(request, "model_dump", dict)()
        status = approvals.status_of(data)
        if status != approvals.PENDING and data.get("approval_id"):
            resolved[data["approval_id"]] = (status, data)
    if not resolved:
        return
    head = await owner._planner.head(execution_id)
    if head is None or head.status != WAITING:
        return
    for pending in await owner.list_approvals(status=approvals.PENDING):
        found = resolved.get(pending["approval_id"])
        if found is not None and pending.get("execution") == execution_id:
            status, data = found
            await owner.resolve_approval(pending["approval_id"], approved=status == approvals.APPROVED,
                                     reviewer=data.get("decided_by"), notes=data.get("notes"))

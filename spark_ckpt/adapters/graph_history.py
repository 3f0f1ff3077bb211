"""State history and time travel on a checkpointed graph: every checkpoint of an execution as a whole
state (``get_state_history``, ``get_state``), and a changed state written as a fork to continue
(``update_state``), as LangGraph's ``get_state_history`` / ``update_state`` / invoking a checkpoint id.

``update_state(checkpoint, values)`` never changes the checkpoint's execution: it writes the start
record of a new execution, the checkpoint's record with ``values`` set in the graph state (and the keys
in ``remove`` deleted). ``continue_from_checkpoint(<its id>)`` (or ``recover_and_continue(execution_id=
<its execution>)``) then continues it like any fork: the journal up to the source checkpoint is replayed
(the visits are not run again) and what follows runs live on the changed state. A crash during that
continuation is recovered like any other. The fork is an unfinished execution until it is continued,
so ``recover_and_continue()`` without an id may pick it as the newest; ``run_with_recovery``'s
``resume`` never does (an edited fork is not a run of the same inputs).

Nodes not safe to re-run: a fork re-runs every visit its source execution made after the checkpoint;
``update_state`` refuses (``UnsafeToRetryError``, nothing written) when one of them is of a node marked
not safe to re-run, unless ``allow_unsafe_rerun=True``, which then holds for that fork.

``as_node``: the node the update is made as, validated and stored with the fork
(``metadata["state_update"]["as_node"]``) for people and tools to read; it does not change which
nodes run next: that is the source checkpoint's (its pending inputs and the rest of the journal).

A mixin of ``CheckpointedGraph`` (its backend, codec, planner and runner).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

from ..codec.convert import faithful_copy
from ..engine import state_history
from ..engine.journal import Journal
from ..engine.state_diff import StateDiff, diff
from ..engine.state_history import StateSnapshot
from ..errors import CheckpointNotFoundError, ConfigError, SparkCkptError
from ..model import GRAPH, CheckpointHeader, GraphCheckpoint, new_id
from .graph_state import is_bookkeeping


class StateHistoryAccess:
    """State history, state at a checkpoint, state updates as forks (see the module docstring)."""

    def get_state_history(self, execution_id: str | None = None, *, limit: int | None = None
                          ) -> Iterator[StateSnapshot]:
        """Snapshots of the whole state at each checkpoint of ``execution_id`` (default: this graph's
        newest execution), newest first; at most ``limit``. Lazy: a checkpoint is read when the
        iteration reaches it, each once (records holding only changes are made whole from the ones
        before them as the walk goes back)."""
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise ConfigError(f"limit must be an int >= 0 or None, got {limit!r}")
        headers = self._history_headers(self._history_execution(execution_id))
        return state_history.history(headers, self._history_loader(), wanted_extras=self._adapter_keys, limit=limit)

    def get_state(self, checkpoint: Any = None) -> StateSnapshot:
        """The snapshot at ``checkpoint`` (an id, a ``GraphCheckpoint`` or a ``StateSnapshot``;
        default: this graph's newest checkpoint)."""
        if checkpoint is None:
            newest = self.backend.list(graph_id=self.graph_id, limit=1)
            if not newest:
                raise CheckpointNotFoundError(f"graph {self.graph_id!r} has no checkpoint in {self.backend.describe()}")
            checkpoint_id = newest[0].checkpoint_id
        else:
            checkpoint_id = _checkpoint_id(checkpoint)
        stored = self.backend.get(checkpoint_id)  # (CheckpointNotFoundError names it)
        self._check_history_header(stored.header)
        headers = [h for h in self._history_headers(stored.header.execution_id) if h.seq <= stored.header.seq]
        return next(state_history.history(headers, self._history_loader(), wanted_extras=self._adapter_keys, limit=1))

    def diff_states(self, a: Any, b: Any) -> StateDiff:
        """What changed from checkpoint ``a`` to ``b`` (ids, records or snapshots): graph state keys
        added, removed and changed, node states, and the visits between them."""
        return diff(self._load(_checkpoint_id(a)), self._load(_checkpoint_id(b)))

    def update_state(self, checkpoint: Any, values: Mapping[str, Any], as_node: Any = None, *,
                     remove: Iterable[str] = (), allow_unsafe_rerun: bool = False) -> GraphCheckpoint:
        """Write a fork of ``checkpoint`` (an id, record or snapshot) whose graph state has ``values``
        set (and the keys in ``remove`` deleted); returns its record, whose id
        ``continue_from_checkpoint`` continues. The source execution is not changed. Values are
        stored exactly or refused (``EncodeError`` naming the key). See the module docstring for
        ``as_node`` and nodes not safe to re-run."""
        runner = self._runner
        if runner.active is not None:
            raise SparkCkptError(
                "update_state() was called during a run of this graph; call it once the run ended (or stopped)"
            )
        source = self._load(_checkpoint_id(checkpoint))
        from .graph import is_restore_point

        if is_restore_point(source):
            raise ConfigError(
                f"checkpoint {source.checkpoint_id} is a restore point taken outside a run: there is no run to "
                "continue. restore_from_checkpoint() it, change graph.state, then run the graph"
            )
        changes = self._state_changes(source, values, remove)
        node = None if as_node is None else self.node_key(as_node)
        # refused now, before anything is written: continuing the fork would re-run what this refuses
        self._check_continuable(source, fork=True, allow_unsafe_rerun=allow_unsafe_rerun, skips={})
        state = {key: value for key, value in source.graph_state.items() if key not in changes["removed"]}
        state.update(changes["set"])
        journal = Journal.resuming(source, same_execution=False)
        ex = runner.new_execution(new_id("ex-"), source.run_input, journal=journal, fork_of=source)
        edited = attrs.evolve(source, graph_state=state)
        data = ex.builder.fork_start(edited, seq=0, inflight=journal.inflight, skip={})
        data["extras"]["state_update"] = {
            "from": source.checkpoint_id, "as_node": node, "set": list(changes["set"]),
            "removed": changes["removed"], "at": time.time(), "allow_unsafe_rerun": bool(allow_unsafe_rerun),
        }
        header, blob = ex.writer.encode(data)
        self.backend.put(header, blob)
        return self._decode(blob, header)

    # -- helpers --------------------------------------------------------------------------------------------
    def _state_changes(self, source: GraphCheckpoint, values: Any, remove: Iterable[str]) -> dict[str, Any]:
        if not isinstance(values, Mapping):
            raise ConfigError(f"update_state() takes the values to set as a dict of graph state keys, got "
                              f"{type(values).__name__}")
        if isinstance(remove, str):
            remove = [remove]
        removed = list(dict.fromkeys(remove))
        bad = [key for key in [*values, *removed] if not isinstance(key, str) or is_bookkeeping(self.graph.state, key)]
        if bad:
            raise ConfigError(f"update_state(): {bad[0]!r} is not a graph state key that can be set "
                              "(keys are str; Spark's own keys are not stored)")
        both = [key for key in removed if key in values]
        if both:
            raise ConfigError(f"update_state(): {both[0]!r} is both set and removed")
        unknown = [key for key in removed if key not in source.graph_state]
        if unknown:
            raise ConfigError(f"update_state(): cannot remove {unknown[0]!r}: checkpoint {source.checkpoint_id} has "
                              f"no such graph state key (it has: {', '.join(map(repr, source.graph_state)) or 'none'})")
        # a private copy, through the stored form: refused now (EncodeError naming the key) if not faithful
        copied = {key: faithful_copy(value, what=f"update_state() value {key!r}") for key, value in values.items()}
        return {"set": copied, "removed": removed}

    def _history_execution(self, execution_id: str | None) -> str:
        if execution_id is None:
            newest = self.backend.executions(graph_id=self.graph_id, limit=1)
            if not newest:
                raise CheckpointNotFoundError(f"graph {self.graph_id!r} has no execution in {self.backend.describe()}")
            return newest[0].execution_id
        if not isinstance(execution_id, str):
            raise ConfigError(f"execution_id must be a str, got {type(execution_id).__name__}")
        head = self.backend.execution_head(execution_id)
        if head is None:
            raise CheckpointNotFoundError(
                f"no execution {execution_id!r} in {self.backend.describe()}; list_checkpoints() or "
                "`spark-ckpt list --executions` shows those stored"
            )
        self._check_history_header(head)
        return execution_id

    def _check_history_header(self, header: CheckpointHeader) -> None:
        if header.kind != GRAPH or header.graph_id != self.graph_id:
            raise ConfigError(
                f"checkpoint {header.checkpoint_id} belongs to {header.kind} {header.graph_id!r}, not graph "
                f"{self.graph_id!r}"
            )

    def _history_headers(self, execution_id: str) -> list[CheckpointHeader]:
        return [h for h in self.backend.list(execution_id=execution_id) if h.kind == GRAPH]

    def _history_loader(self) -> Any:
        decoded: dict[int, GraphCheckpoint] = {}  # one walk's records, by seq: each decoded once

        def load(header: CheckpointHeader) -> GraphCheckpoint:
            record = decoded.get(header.seq)
            if record is None:
                record = decoded[header.seq] = self._decode(self.backend.get(header.checkpoint_id).blob, header)
            return record

        return load


def _checkpoint_id(checkpoint: Any) -> str:
    if isinstance(checkpoint, str):
        return checkpoint
    found = getattr(checkpoint, "checkpoint_id", None)
    if isinstance(found, str) and isinstance(checkpoint, (GraphCheckpoint, StateSnapshot)):
        return found
    raise ConfigError(f"expected a checkpoint id, a GraphCheckpoint or a StateSnapshot, got {type(checkpoint).__name__}")

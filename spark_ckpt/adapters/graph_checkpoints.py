"""The guide's checkpoint API on a checkpointed graph: reading records back (always whole), restore
points, checkpoint files, restoring a record into the graph, and what the next continuation skips.

A mixin of ``CheckpointedGraph`` (it uses its backend, codec, recovery planner and runner); kept apart
so the facade shows the run and recovery, and this file the manual control a user reaches for.
"""

from __future__ import annotations

import copy
import os
import uuid
from pathlib import Path
from typing import Any

from ..codec import Identity
from ..codec.convert import dumps_data
from ..errors import BackendError, CheckpointNotFoundError, ConfigError, SparkCkptError
from ..model import COMPLETED, CheckpointHeader, GraphCheckpoint, new_id
from .graph_state import dump_message, restore_into_graph


class CheckpointAccess:
    """Listing, reading, saving and restoring a graph's checkpoints (see the module docstring)."""

    def list_checkpoints(self, limit: int | None = None, *, execution_id: str | None = None) -> list[CheckpointHeader]:
        """Headers of this graph's checkpoints, newest first."""
        return self.backend.list(graph_id=self.graph_id, execution_id=execution_id, limit=limit)

    def get_last_checkpoint(self) -> GraphCheckpoint | None:
        """The newest checkpoint of this graph (any execution), or None."""
        return self.get_checkpoint(offset=0, missing_ok=True)

    def get_checkpoint(self, offset: int | str = 0, *, missing_ok: bool = False) -> GraphCheckpoint | None:
        """The checkpoint ``offset`` places before the newest (0 = newest), made whole; or, given a
        checkpoint id, that checkpoint."""
        if isinstance(offset, str):
            try:
                return self._load(offset)
            except CheckpointNotFoundError:
                if missing_ok:
                    return None
                raise
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ConfigError(f"get_checkpoint() takes an offset (an int >= 0) or a checkpoint id, got {offset!r}")
        headers = self.backend.list(graph_id=self.graph_id, limit=offset + 1)
        if len(headers) <= offset:
            if missing_ok:
                return None
            raise CheckpointNotFoundError(
                f"graph {self.graph_id!r} has {len(headers)} checkpoint(s); none at offset {offset}"
            )
        header = headers[offset]
        return self._with_full_history(self._decode(self.backend.get(header.checkpoint_id).blob, header))

    def create_checkpoint(self) -> GraphCheckpoint:
        """Snapshot the graph now and store it.

        Outside a run it becomes a standalone, completed execution (a restore point that recovery never
        picks on its own); inside a node, use ``await checkpoint_now()`` instead.
        """
        runner = self._runner
        if runner.active is not None:
            raise SparkCkptError(
                "create_checkpoint() was called during a run; from inside a node use "
                "`await spark_ckpt.checkpoint_now()` (or `await context.create_checkpoint()`)"
            )
        ex = runner.new_execution(new_id("ex-"), None)
        data = ex.builder.build(runner.state, seq=0, status=COMPLETED, superstep=0, journal=ex.journal,
                                run_input=None, skip={})
        data["extras"]["manual"] = True
        header, blob = ex.writer.encode(data)
        self.backend.put(header, blob)
        self._restore_point = header.checkpoint_id  # the runs that follow name it in their start record
        return self._decode(blob, header)

    def save_checkpoint(self, path: str | os.PathLike[str], checkpoint: GraphCheckpoint | str | None = None) -> Path:
        """Write a checkpoint (default: the newest) to ``path`` as its verified, encoded bytes."""
        if checkpoint is None:
            checkpoint = self.get_last_checkpoint() or self.create_checkpoint()
        record = self._with_full_history(self._resolve(checkpoint))
        target = Path(path)
        # re-encoded with the whole history, so the file stands alone
        blob = self.codec.encode(record, Identity(record.graph_id, record.execution_id, record.seq))
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise BackendError(f"cannot write checkpoint file {target}: {exc.strerror}; choose a writable path") from None
        return target

    def load_from_checkpoint(self, path: str | os.PathLike[str], *, restore: bool = True) -> GraphCheckpoint:
        """Read a file written by ``save_checkpoint``, verify it belongs to this graph, restore it."""
        try:
            blob = Path(path).read_bytes()
        except OSError as exc:
            raise CheckpointNotFoundError(f"cannot read checkpoint file {path}: {exc.strerror}") from None
        record = self._decode(blob)
        self._check_graph(record)
        if restore:
            restore_into_graph(self.graph, self._nodes_by_key, record)
            self._restored = record
        return record

    def restore_from_checkpoint(self, checkpoint: GraphCheckpoint | str) -> GraphCheckpoint:
        """Load graph and node state from a checkpoint (or its id); ``continue_from_checkpoint`` resumes it."""
        record = self._resolve(checkpoint)
        self._check_graph(record)
        restore_into_graph(self.graph, self._nodes_by_key, record)
        self._restored = record
        from .graph import is_restore_point

        self._restore_point = record.checkpoint_id if is_restore_point(record) else None
        return record

    def _resolve(self, checkpoint: GraphCheckpoint | str) -> GraphCheckpoint:
        if isinstance(checkpoint, GraphCheckpoint):
            return checkpoint
        if isinstance(checkpoint, str):
            return self._load(checkpoint)
        raise ConfigError(f"expected a GraphCheckpoint or a checkpoint id, got {type(checkpoint).__name__}")

    def get_current_node(self) -> str | None:
        """Key of the node that failed (or runs next) in the restored checkpoint. For a restore point
        (``create_checkpoint()`` outside a run): that of the unfinished run that started after it, the
        one ``continue_from_checkpoint()`` continues."""
        record = self._restored or self.get_last_checkpoint()
        if record is None:
            return None
        from .graph import is_restore_point

        if is_restore_point(record):
            later = self._unfinished_after(record)
            if later is None:
                return None
            record = self._load(later.checkpoint_id)
        if record.failure is not None and record.failure.node_key:
            return record.failure.node_key
        return record.current_node

    def _unfinished_after(self, restore_point: GraphCheckpoint) -> CheckpointHeader | None:
        """The newest unfinished execution of this graph started after ``restore_point`` (its start record
        names it: runs started after ``create_checkpoint()`` or after restoring that point do)."""
        for head in self.backend.executions(graph_id=self.graph_id, unfinished_only=True):
            if head.kind != "graph" or head.created_at < restore_point.timestamp:
                continue
            start = self._start_record(head.execution_id)  # None: gone or unreadable, not known to follow it
            if start is not None and start.extras.get("restore_point") == restore_point.checkpoint_id:
                return head
        return None

    def _start_record(self, execution_id: str) -> GraphCheckpoint | None:
        """The execution's first record (its run input, and what it was started from), or None when it
        is gone or cannot be read."""
        from ..model import canonical_checkpoint_id

        try:
            return self._decode(self.backend.get(canonical_checkpoint_id(execution_id, 0)).blob)
        except SparkCkptError:
            return None

    def skip_node(self, node: Any, output: Any = None) -> None:
        """On the next continuation (``continue_from_checkpoint`` or ``recover_and_continue``), do not
        run ``node``'s next visit: pass its input through as its output (or use ``output``), so its
        successors still run. The request is stored with the continuation, so a crash keeps it; one
        the continuation never reaches is listed in ``last_recovery.unused_skips``."""
        if node is None:
            raise ConfigError(
                "skip_node(None): there is no node to skip (get_current_node() is None when the restored "
                f"checkpoint has no failed or next node); nodes: {', '.join(self.node_keys)}"
            )
        key = self.node_key(node)
        if output is None:
            self._pending_skips[key] = None
            return
        data = dump_message(output) if hasattr(output, "model_dump") else {"content": output}
        dumps_data(data, what=f"skip_node({key!r}) output")  # refused now, not when it is stored
        self._pending_skips[key] = data

    def get_state_snapshot(self) -> dict[str, Any]:
        """A deep copy of the graph state."""
        return copy.deepcopy(self.graph.state.get_snapshot())

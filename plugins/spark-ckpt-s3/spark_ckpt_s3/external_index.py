"""The S3 backend's optional index: every header also stored in another backend, for fast listings.

With ``index=<backend URL>`` (e.g. ``sqlite:///var/ckpt-index.db`` or a ``postgresql://`` URL) every
header is also stored in that backend (with an empty blob), and ``list``/``executions`` answer from
it with one query instead of listing objects. The index row is written right after the object is
published; a writer killed in between leaves an object the index does not know. That orphan was
never acknowledged, so the next owner of the execution (it holds the lease) replaces it when it
writes the same position; ``rebuild_index()`` re-reads the bucket into the index (e.g. when adding
an index to an existing store).

The index's own executions index does the job of the head objects (none are written): a put under a
lease checks the index's head before publishing, and the index advances it when the row is written,
so it may lag the bucket by that one write like the rows. Use one mode per bucket: a process without
the index would read head objects nobody advances.

Invariants: an index row is written only for a published object; it never leads the bucket.
"""

from __future__ import annotations

from typing import Any

from spark_ckpt.errors import ConfigError, DuplicateCheckpointError
from spark_ckpt.model import CheckpointHeader


class ExternalIndex:
    """Mixin of ``S3Backend``: writing to, and rebuilding, the optional index (``_index``)."""

    _index: Any

    def _index_put(self, header: CheckpointHeader) -> None:
        if self._index is None:
            return
        try:
            self._index.put(header, b"")
        except DuplicateCheckpointError:
            pass  # already indexed (a retried put)

    def _is_unindexed_orphan(self, header: CheckpointHeader, key: str) -> bool:
        if self._index is None:
            return False
        indexed = {h.seq for h in self._index.list(execution_id=header.execution_id)}
        return header.seq not in indexed and self._head(key) is not None

    def rebuild_index(self, graph_id: str | None = None) -> int:
        """Put every checkpoint of the bucket (or of one graph) that the index lacks into it."""
        if self._index is None:
            raise ConfigError("this S3 backend has no index (add ?index=sqlite:///path.db to its URL)")
        known = {h.checkpoint_id for h in self._index.list(graph_id=graph_id)}
        missing = [
            h for h in self._headers_of(list(self._objects(self._prefix_for(graph_id, None) or self._key("ckpt") + "/")))
            if h.checkpoint_id not in known
        ]
        # a head object written without the index gives its checkpoint's header the writer's tag
        head_of = self._heads_of({h.execution_id for h in missing})
        for header in sorted(missing, key=lambda h: (h.execution_id, h.seq)):
            head = head_of.get(header.execution_id)
            self._index_put(head if head is not None and head.checkpoint_id == header.checkpoint_id else header)
        return len(missing)

"""What changed between two whole checkpoints: graph state keys, node states, and the visits between.

Values are compared as stored (``codec.values.identical``): ``1`` and ``1.0``, a tuple and a list, a dict
with its keys in another order, are changes, as they are to a restore. The visits between are
those in the newer journal that the older one does not hold (when both are of one execution, or the
newer was forked from the older's journal, that is what ran between them).

No Spark import, no I/O.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..codec.values import identical
from ..model import GraphCheckpoint, NodeSnapshot, Visit


@attrs.frozen
class StateDiff:
    """``a`` -> ``b``: graph state keys ``added`` (key: value in b), ``removed`` (key: value in a) and
    ``changed`` (key: (value in a, value in b)); ``nodes``: per node whose state differs, field:
    (in a, in b); ``visits``: the visits b's journal holds that a's does not."""

    a: str
    b: str
    added: dict[str, Any]
    removed: dict[str, Any]
    changed: dict[str, tuple[Any, Any]]
    nodes: dict[str, dict[str, tuple[Any, Any]]]
    visits: list[Visit]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.nodes or self.visits)


_NODE_FIELDS = [field.name for field in attrs.fields(NodeSnapshot)]


def diff(a: GraphCheckpoint, b: GraphCheckpoint) -> StateDiff:
    """What changed from ``a`` to ``b`` (both made whole, journal included)."""
    sa, sb = a.graph_state, b.graph_state
    nodes: dict[str, dict[str, tuple[Any, Any]]] = {}
    empty = NodeSnapshot()
    for key in [*a.node_states, *(k for k in b.node_states if k not in a.node_states)]:
        na, nb = a.node_states.get(key, empty), b.node_states.get(key, empty)
        fields = {name: (getattr(na, name), getattr(nb, name)) for name in _NODE_FIELDS
                  if not identical(getattr(na, name), getattr(nb, name))}
        if fields:
            nodes[key] = fields
    done = {(visit.node_key, visit.index, visit.superstep) for visit in a.execution_history}
    return StateDiff(
        a=a.checkpoint_id, b=b.checkpoint_id,
        added={key: value for key, value in sb.items() if key not in sa},
        removed={key: value for key, value in sa.items() if key not in sb},
        changed={key: (sa[key], value) for key, value in sb.items() if key in sa and not identical(sa[key], value)},
        nodes=nodes,
        visits=[visit for visit in b.execution_history if (visit.node_key, visit.index, visit.superstep) not in done],
    )

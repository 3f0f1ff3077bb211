"""The state history commands: ``show CHECKPOINT_ID --whole`` (the whole state and journal at a
checkpoint, not the changes it stores) and ``diff A B`` (graph state keys added, removed and changed,
node state changes, and the visits between two checkpoints).

Invariants: read only (records are made whole in memory, nothing is written); a value of a type this
process does not allow is shown described (``read_only``); values are compared as stored
(``engine.state_diff``); the store is closed however the command ends.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from ..errors import ConfigError
from .output import preview, print_json, table
from .stores import make_codec, open_for, read_only


def add_commands(sub: Any) -> None:
    """Register ``diff`` (``show --whole`` is an option of ``show``: ``add_show_options``)."""
    p = sub.add_parser("diff", help="what changed between two checkpoints: graph state keys added, removed and "
                                    "changed, node states, and the visits between them")
    p.add_argument("a", metavar="A", help="the earlier checkpoint id")
    p.add_argument("b", metavar="B", help="the later checkpoint id")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_diff)


def add_show_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--whole", action="store_true",
                   help="the whole graph state, node states and journal at that checkpoint (made whole from the "
                        "execution's earlier checkpoints), not only what it stores")


def _whole(backend: Any, codec: Any, checkpoint_id: str) -> tuple[Any, Any]:
    """The stored header and the graph record ``checkpoint_id`` made whole."""
    from ..engine.records import RecordReader
    from ..model import GRAPH

    stored = backend.get(checkpoint_id)
    if stored.header.kind != GRAPH:
        raise ConfigError(f"checkpoint {checkpoint_id} is an {stored.header.kind} record; --whole and diff read graph "
                          "checkpoints (an agent record's state is shown whole by `show`)")
    reader = RecordReader(backend, codec)
    return stored.header, reader.whole(stored.header)


@read_only
def show_whole(args: argparse.Namespace, out: TextIO) -> int:
    """``show CHECKPOINT_ID --whole``."""
    from ..codec import to_data
    from .inspection import _header_data, _show_graph_checkpoint

    backend = open_for(args, inspect=True)
    try:
        header, record = _whole(backend, make_codec(args), args.checkpoint_id)
    finally:
        backend.close()
    if args.json:
        print_json({"header": _header_data(header), "whole": True, "checkpoint": to_data(record)}, out)
        return 0
    _show_graph_checkpoint(header, record, out)
    return 0


@read_only
def cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    from ..engine.state_diff import diff

    backend = open_for(args, inspect=True)
    codec = make_codec(args)
    try:
        header_a, a = _whole(backend, codec, args.a)
        header_b, b = _whole(backend, codec, args.b)
    finally:
        backend.close()
    changes = diff(a, b)
    relation = _relation(a, b)
    if args.json:
        print_json(_diff_data(changes, a, b, relation), out)
        return 0
    _print_diff(changes, a, b, relation, out)
    return 0


def _relation(a: Any, b: Any) -> str:
    if a.execution_id == b.execution_id:
        return "same execution" if a.seq <= b.seq else "same execution, A is the later one"
    if b.extras.get("forked_from") == a.checkpoint_id:
        update = b.extras.get("state_update")
        return "B forked from A by update_state()" if isinstance(update, dict) else "B forked from A"
    return "different executions"


def _visit_data(visit: Any) -> dict[str, Any]:
    return {"node": visit.node_key, "visit": visit.index, "superstep": visit.superstep, "status": visit.status}


def _diff_data(changes: Any, a: Any, b: Any, relation: str) -> dict[str, Any]:
    def side(record: Any) -> dict[str, Any]:
        return {"id": record.checkpoint_id, "execution": record.execution_id, "seq": record.seq,
                "superstep": record.superstep, "status": record.status}

    def pair(values: tuple[Any, Any]) -> dict[str, Any]:
        return {"from": values[0], "to": values[1]}

    from ..codec import to_data

    return {
        "a": side(a), "b": side(b), "relation": relation,
        "graph_state": {
            "added": changes.added, "removed": changes.removed,
            "changed": {key: pair(values) for key, values in changes.changed.items()},
        },
        "nodes": {key: {name: pair(to_data(values)) for name, values in fields.items()}
                  for key, fields in changes.nodes.items()},
        "visits": [_visit_data(visit) for visit in changes.visits],
    }


def _print_diff(changes: Any, a: Any, b: Any, relation: str, out: TextIO) -> None:
    p = lambda *parts: print(*parts, file=out)  # noqa: E731
    p(f"A  {a.checkpoint_id}   seq {a.seq}   superstep {a.superstep}   {a.status}")
    p(f"B  {b.checkpoint_id}   seq {b.seq}   superstep {b.superstep}   {b.status}")
    p(f"   ({relation})")
    if changes.empty:
        p("\nno changes: same graph state, node states and journal")
        return
    counts = f"{len(changes.added)} added, {len(changes.removed)} removed, {len(changes.changed)} changed"
    p(f"\ngraph state ({counts})")
    for key, value in changes.added.items():
        p(f"  + {key}: {preview(value)}")
    for key, value in changes.removed.items():
        p(f"  - {key}: {preview(value)}")
    for key, (old, new) in changes.changed.items():
        p(f"  ~ {key}: {preview(old, 34)} -> {preview(new, 34)}")
    p(f"\nnode states ({len(changes.nodes)} nodes changed)")
    for key, fields in changes.nodes.items():
        for name, (old, new) in fields.items():
            if name in ("pending_inputs", "pending_from"):  # the count says it; the inputs are in `show --whole`
                p(f"  {key}.{name}: {len(old)} -> {len(new)} pending")
            else:
                p(f"  {key}.{name}: {preview(old, 34)} -> {preview(new, 34)}")
    p(f"\nvisits between them ({len(changes.visits)})")
    if changes.visits:
        table([[v.node_key, v.index, v.superstep, v.status] for v in changes.visits],
              ["node", "visit", "superstep", "status"], out, indent="  ")

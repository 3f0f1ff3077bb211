"""Deltas between two JSON-able agent snapshots, so a long conversation stores each message once.

A delta is a list of operations on key paths:

* ``["set", path, value]``: replace (or add) the value at ``path``
* ``["del", path]``: remove the key at ``path``
* ``["ext", path, drop, items]``: a list lost ``drop`` items at its front (a rolling memory window)
  and gained ``items`` at its end

Pure data in, pure data out: no Spark import, no I/O.
"""

from __future__ import annotations

import copy
from typing import Any

from ..codec.values import identical
from ..errors import CorruptCheckpointError

# A list that changed in any other way than "drop from the front, append at the end" is stored whole.
_MAX_DROP_CANDIDATES = 64


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[Any]:
    """Operations that turn ``old`` into ``new`` (``apply(old, diff(old, new)) == new``)."""
    ops: list[Any] = []
    _diff_dict(old, new, [], ops)
    return ops


def _diff_dict(old: dict[str, Any], new: dict[str, Any], path: list[str], ops: list[Any]) -> None:
    for key, value in new.items():
        sub = [*path, key]
        if key not in old:
            ops.append(["set", sub, value])
            continue
        before = old[key]
        if identical(before, value):  # (not ==: 1 == True == 1.0, and NaN != NaN)
            continue
        if type(before) is dict and type(value) is dict and _order_kept(before, value):
            _diff_dict(before, value, sub, ops)
        elif type(before) is list and type(value) is list:
            ops.append(_diff_list(before, value, sub))
        else:
            ops.append(["set", sub, value])
    for key in old:
        if key not in new:
            ops.append(["del", [*path, key]])


def _order_kept(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new``'s key order is what applying its changes to ``old`` gives: the keys both hold
    in the same order, and the keys only ``new`` holds after them (a "set" adds a key at the end)."""
    common = [key for key in new if key in old]
    return common == [key for key in old if key in new] and list(new)[: len(common)] == common


def _same_items(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))


def _diff_list(old: list[Any], new: list[Any], path: list[str]) -> list[Any]:
    drop = _front_drop(old, new)
    if drop is None:
        return ["set", path, new]
    kept = len(old) - drop
    return ["ext", path, drop, new[kept:]]


def _front_drop(old: list[Any], new: list[Any]) -> int | None:
    """Smallest ``d`` with ``new`` starting with ``old[d:]``, or None."""
    if _same_items(new[: len(old)], old):
        return 0
    if not new:
        return len(old)
    first = new[0]
    tried = 0
    for drop in range(1, len(old) + 1):
        if drop < len(old) and not identical(old[drop], first):
            continue
        kept = len(old) - drop
        if _same_items(new[:kept], old[drop:]):
            return drop
        tried += 1
        if tried >= _MAX_DROP_CANDIDATES:
            return None
    return None


def apply(state: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    """A new state: ``state`` with ``ops`` applied (``state`` itself is not modified)."""
    result = copy.deepcopy(state)
    for op in ops:
        try:
            kind, path = op[0], op[1]
            parent = result
            for key in path[:-1]:
                parent = parent.setdefault(key, {})
            leaf = path[-1]
            if kind == "set":
                parent[leaf] = copy.deepcopy(op[2])
            elif kind == "del":
                parent.pop(leaf, None)
            elif kind == "ext":
                drop, items = op[2], op[3]
                current = parent.get(leaf)
                if not isinstance(current, list) or drop > len(current):
                    raise CorruptCheckpointError(
                        f"agent state delta does not fit its base at {'.'.join(path)}: the base "
                        "checkpoint is not the one this delta was written against"
                    )
                parent[leaf] = current[drop:] + copy.deepcopy(items)
            else:
                raise CorruptCheckpointError(f"unknown agent state delta operation {kind!r}")
        except (IndexError, TypeError, AttributeError) as exc:
            raise CorruptCheckpointError(f"malformed agent state delta operation {op!r}: {exc}") from None
    return result

"""Which visit's output each pending input of a node is: replay that does not depend on sibling order.

Spark keeps a superstep's active nodes in a set, so the order in which two parents deliver their
outputs to a join (``receive_from_parent`` appends to the node's ``pending_inputs``) differs between
processes. A visit is therefore journaled with the origin of the input it consumed
(``Visit.input_from``: ``[parent key, parent visit index]``), and on replay the node is fed that
same input, swapped in from its pending inputs if this process delivered another one first. At the
end of the replayed prefix the pending inputs are put back in the order the checkpoint stored.

Invariants: an origin is recorded when the delivering call appends to the receiver's pending
inputs, matched to messages by identity (Spark passes outputs by reference); a message delivered
some other way (the run input, custom buffering nodes, delayed copies) has no origin, and its
visits replay by visit number as before. No I/O.
"""

from __future__ import annotations

from typing import Any

from ..errors import RecoveryDivergedError

Origin = list  # [node_key, visit index]


class Deliveries:
    """Per receiving node, its pending inputs with the origin each was delivered with."""

    def __init__(self) -> None:
        self._pending: dict[str, list[tuple[Any, Origin]]] = {}

    def delivered(self, receiver: str, message: Any, origin: Origin) -> None:
        self._pending.setdefault(receiver, []).append((message, origin))

    def consumed(self, receiver: str, message: Any) -> Origin | None:
        """The origin of ``message``, which ``receiver`` is about to process (forgotten from now)."""
        entries = self._pending.get(receiver)
        if entries:
            for position, (pending, origin) in enumerate(entries):
                if pending is message:
                    del entries[position]
                    return origin
        return None

    def origins(self, receiver: str, messages: Any) -> list[Origin | None]:
        """The origin of each of ``messages`` (a node's pending inputs, in order)."""
        entries = list(self._pending.get(receiver, ()))
        found: list[Origin | None] = []
        for message in messages:
            for position, (pending, origin) in enumerate(entries):
                if pending is message:
                    del entries[position]
                    found.append(origin)
                    break
            else:
                found.append(None)
        return found

    def take(self, receiver: str, queue: Any, current: Any, current_origin: Origin | None, wanted: Origin) -> Any:
        """For a replayed visit that consumed the input from ``wanted`` when it was journaled but was
        handed ``current`` here: the pending message from ``wanted``, with ``current`` put back in its
        place in ``queue`` (the node's pending inputs). None if no pending input is from ``wanted``."""
        entries = self._pending.get(receiver, [])
        for position, (message, origin) in enumerate(entries):
            if origin == wanted:
                break
        else:
            return None
        for index, pending in enumerate(queue):
            if pending is message:
                queue[index] = current
                entries[position] = (current, current_origin)
                return message
        return None

    def reorder(self, receiver: str, queue: Any, stored: list[Origin | None]) -> None:
        """Put ``queue`` (the node's pending inputs) in the order of ``stored`` origins, as the
        checkpoint holds them; ``RecoveryDivergedError`` if they are not the same inputs."""
        current = list(queue)
        origins = self.origins(receiver, current)
        if len(current) != len(stored):
            raise diverged(receiver, f"{len(stored)} pending input(s) at the checkpoint, {len(current)} here")
        if None in origins or None in stored:
            return  # some inputs came another way: their order cannot be told
        if sorted(map(tuple, origins)) != sorted(map(tuple, stored)):
            raise diverged(receiver, f"pending inputs from {stored} at the checkpoint, from {origins} here")
        pool = list(zip(current, origins))
        ordered = []
        for wanted in stored:
            position = next(i for i, (_, origin) in enumerate(pool) if origin == wanted)
            ordered.append(pool.pop(position))
        queue.clear()
        queue.extend(message for message, _ in ordered)
        self._pending[receiver] = ordered


def diverged(node: str, what: str) -> RecoveryDivergedError:
    return RecoveryDivergedError(
        f"replaying the journal did not reproduce the run that wrote it at node {node!r} ({what}): the "
        "graph routed differently (changed code, or an edge condition that reads state). Nothing ran "
        "live; restore the graph code the run used, or start a new run"
    )

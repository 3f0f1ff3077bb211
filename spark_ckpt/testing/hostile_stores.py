"""A hostile store for backend tests: a small graph whose nodes never read what they are given, and
the check that a damaged store reaches callers only as ``SparkCkptError``.

Backend test suites (the PostgreSQL and S3 plugins use it) write real checkpoints with
``write_pristine(url)``, damage what their store indexes, then call ``exercise(pristine, url, case, escapes)``: every reading
API of the backend, a checkpointed graph's reads and recovery, and the CLI's ``list`` and ``verify``.
``escapes.found`` lists every exception that was not a ``SparkCkptError`` (and every traceback the CLI
printed); ``escapes.corrupt_index`` says whether the damage was reported as ``CorruptIndexError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import traceback
from typing import Any, Callable

from spark.graphs import Graph
from spark.nodes import Node

from .. import checkpointed
from ..cli import main
from ..config import CheckpointConfig, open_backend
from ..errors import CorruptIndexError, SparkCkptError

#: nodes that raise once, the next time they run (a failed execution to recover)
FAIL_ONCE: set[str] = set()


class Mark(Node):
    """Writes its own keys; never reads state or input (so damaged index entries cannot make it raise)."""

    async def process(self, context):
        self.visits = getattr(self, "visits", 0) + 1
        await context.graph_state.set(f"{self.id}_seen", self.visits)
        if self.id in FAIL_ONCE:
            FAIL_ONCE.discard(self.id)
            raise RuntimeError(f"injected failure in {self.id}")
        return {"node": self.id, "done": self.visits >= 2}


def build() -> Graph:
    """a -> b (two passes) -> c -> d."""
    a, b, c, d = Mark(id="a"), Mark(id="b"), Mark(id="c"), Mark(id="d")
    a >> b
    b.on(done=False) >> b
    b.on(done=True) >> c
    c >> d
    return Graph(start=a)


def write_pristine(url: str) -> tuple[list[str], list[str]]:
    """One completed and one failed execution of ``build()`` at ``url``: (checkpoint ids, execution ids)."""
    import pytest

    config = CheckpointConfig(backend=url)
    graph = checkpointed(build(), config=config, graph_id="hostile")
    asyncio.run(graph.run({}))
    graph.close()
    FAIL_ONCE.add("c")
    failing = checkpointed(build(), config=config, graph_id="hostile")
    with pytest.raises(RuntimeError):
        asyncio.run(failing.run({}))
    headers = failing.list_checkpoints()
    failing.close()
    assert {h.status for h in headers} >= {"completed", "failed"}
    return [h.checkpoint_id for h in headers], sorted({h.execution_id for h in headers})


# -- what must only raise SparkCkptError -----------------------------------------------------------------
class Escapes:
    """Exceptions other than SparkCkptError that reached a caller (and whether a CorruptIndexError did)."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.corrupt_index = False

    def call(self, what: str, case: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except CorruptIndexError:
            self.corrupt_index = True
        except SparkCkptError:
            pass
        except Exception:
            self.found.append(f"{case} / {what}:\n{traceback.format_exc(limit=-6)}")
        return None

    def cli(self, case: str, argv: list[str]) -> int | None:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                code = main(argv, out=io.StringIO())
        except BaseException:
            self.found.append(f"{case} / cli {argv[2:]}:\n{traceback.format_exc(limit=-6)}")
            return None
        text = err.getvalue()
        errors = [line for line in text.splitlines() if line.startswith("spark-ckpt: error:")]
        if (code not in (0, 1, 2) or "Traceback" in text or len(errors) > 1 or (code == 2 and not errors)
                or "error: unexpected" in text):
            self.found.append(f"{case} / cli {argv[2:]}: exit {code}, stderr {text[:500]!r}")
        return code


def exercise(pristine: Any, url: str, case: str, escapes: Escapes) -> dict[str, int | None]:
    """Every reading API on the store at ``url`` (``pristine`` names its ``executions`` and checkpoint
    ``ids``); the exit codes of the CLI commands."""
    backend = escapes.call("open_backend", case, lambda: open_backend(url))
    if backend is not None:
        escapes.call("list", case, backend.list)
        escapes.call("list(graph)", case, lambda: backend.list(graph_id="hostile", limit=3))
        escapes.call("executions", case, backend.executions)
        escapes.call("executions(unfinished)", case, lambda: backend.executions(unfinished_only=True))
        for execution_id in pristine.executions:
            escapes.call(f"execution_head({execution_id})", case, lambda: backend.execution_head(execution_id))
            escapes.call(f"list({execution_id})", case, lambda: backend.list(execution_id=execution_id))
        for checkpoint_id in pristine.ids:
            escapes.call(f"get({checkpoint_id})", case, lambda: backend.get(checkpoint_id))
        backend.close()
    config = CheckpointConfig(backend=url)
    graph = escapes.call("checkpointed", case, lambda: checkpointed(build(), config=config, graph_id="hostile"))
    if graph is not None:
        escapes.call("list_checkpoints", case, graph.list_checkpoints)
        escapes.call("get_last_checkpoint", case, graph.get_last_checkpoint)
        escapes.call("recover_and_continue", case, lambda: asyncio.run(graph.recover_and_continue()))
        graph.close()
    return {" ".join(argv): escapes.cli(case, ["--store", url, *argv])
            for argv in (["list"], ["list", "--executions"], ["verify"])}


"""The crash-recovery demo: ``spark-ckpt demo`` (or ``python -m spark_ckpt.demo``).

A Spark workflow with a loop and a conditional branch runs in worker A, a new process, checkpointed
into a store that outlives it; A SIGKILLs itself inside the N-th pass of the loop. Worker B, another
new process, recovers it: visits completed before the crash are replayed from the journal, the rest
run live. The same workflow then runs uninterrupted in the demo's own process, and the result and
graph state must be equal, with no completed visit run twice. Every real execution of a node's
``process()`` appends a line to a side file, so the demo counts live executions per visit across
processes instead of trusting the library's own report.

Where things are: ``command`` (the options and ``main``, light enough for the ``spark-ckpt``
parser), ``workflow`` (the graph and its side file), ``worker`` (a worker process), ``driver``
(the three steps, the checks and the verdict). This package never imports ``spark_ckpt.cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .command import DEMO_STORE, add_options, build_parser, main, run

# Importing the package stays light (the CLI's parser imports .command); these load on first use.
_LAZY = {
    "GRAPH_ID": "workflow", "DEMO_INPUT": "workflow", "build_graph": "workflow",
    "LEASE_TTL_S": "worker", "VisitRecorder": "worker", "worker_main": "worker",
    "WORKER_TIMEOUT_S": "driver", "run_demo": "driver",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["DEMO_STORE", "add_options", "build_parser", "main", "run", *_LAZY]

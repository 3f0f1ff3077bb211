"""Runs or recovers a ``frontier_graphs`` graph in a worker process, stalling (until SIGKILL) when the
count reaches STALL_AT.

    python tests/frontier_worker.py run|recover STORE STEPS STALL_AT MARKER [INTERVAL]
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import frontier_graphs  # noqa: E402

if __name__ == "__main__":
    action, store, steps, stall_at, marker = sys.argv[1:6]
    interval = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    frontier_graphs.Settings.stall_at, frontier_graphs.Settings.marker = int(stall_at), Path(marker)
    graph = frontier_graphs.build(store, int(steps), interval=interval)
    asyncio.run(graph.run({"go": 1}) if action == "run" else graph.recover_and_continue())

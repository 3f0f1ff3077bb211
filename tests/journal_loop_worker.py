"""Runs ``journal_loop_graphs`` in a worker process, stalling (until SIGKILL) at a given visit.

    python tests/journal_loop_worker.py DB STEPS STALL_AT MARKER
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import journal_loop_graphs  # noqa: E402

if __name__ == "__main__":
    db, steps, stall_at, marker = sys.argv[1:5]
    journal_loop_graphs.Count.stall_at, journal_loop_graphs.Count.marker = int(stall_at), Path(marker)
    asyncio.run(journal_loop_graphs.build(Path(db), int(steps)).run({"go": 1}))

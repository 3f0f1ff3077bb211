"""A worker process for the orphan-recovery tests: runs one execution of ``orphan_factories.build(GRAPH_ID)``.

    python tests/orphan_worker.py GRAPH_ID

Crash cues as in ``graphs.py`` (``SPARK_CKPT_TEST_CRASH=a1:0``); ``SPARK_CKPT_TEST_HOLD`` holds a node.
Prints the result as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import orphan_factories  # noqa: E402


async def main() -> None:
    graph = orphan_factories.build(sys.argv[1])
    result = await graph.run(orphan_factories.INPUT)
    print(json.dumps(result.content))


if __name__ == "__main__":
    asyncio.run(main())

"""``spark-ckpt worker module:factory``: recover the executions whose worker died (``spark_ckpt.orphans``).

    spark-ckpt worker myapp.workflows:build_graph --store postgresql://... --concurrency 4
    spark-ckpt worker myapp.workflows:build_graph --once          (one sweep, then exit)

Prints one line per execution it looked at (``--json``: one JSON object per line). Polls every
``--poll`` seconds until Ctrl-C or SIGTERM, which stop it cleanly: the recoveries under way are
cancelled, record that, and release their leases, so the next worker continues them at once.
Exit code: 0, or 1 when an execution it tried failed or was refused (2: bad options, as every command).

The store: ``--store`` (or ``$SPARK_CKPT_STORE``), else the store of the wrappers the factory builds
(a zero-argument factory or a mapping); the wrappers must use the same store. Spark is imported only
when the factory is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from typing import Any, TextIO

from ..command_line import positive_float, positive_int
from .stores import STORE_ENV


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "worker", help="recover the unfinished executions whose worker died or whose lease expired "
                       "(one worker per execution, however many run)")
    p.add_argument("factory", metavar="MODULE:FACTORY",
                   help="a function that returns a checkpointed graph or agent: given the graph id, or given "
                        "nothing (it serves its own graph id); or a {graph_id: function} mapping")
    p.add_argument("--store", metavar="URL", default=argparse.SUPPRESS,
                   help=f"the store to scan (default: the global --store, ${STORE_ENV}, else the factory's)")
    p.add_argument("--concurrency", metavar="N", type=positive_int, default=1, help="recoveries at once (default 1)")
    p.add_argument("--graph", metavar="ID", action="append", dest="graph_ids",
                   help="only this graph id (repeatable; default: the factory's, else every graph in the store)")
    p.add_argument("--once", action="store_true", help="one sweep, then exit (default: keep polling)")
    p.add_argument("--poll", metavar="SECONDS", type=positive_float, default=5.0,
                   help="seconds between sweeps when polling (default 5)")
    p.add_argument("--wait", action="store_true",
                   help="wait for a live worker's lease to end instead of skipping its execution")
    p.add_argument("--include-failed", action="store_true",
                   help="also recover executions whose run failed (default: only crashed or interrupted ones)")
    p.add_argument("--json", action="store_true", help="one JSON object per execution instead of a line")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace, out: TextIO) -> int:
    from ..config import CheckpointConfig
    from ..orphans import recover_orphans

    url = getattr(args, "store", None) or os.environ.get(STORE_ENV)
    config = CheckpointConfig(backend=url) if url else None
    if not logging.getLogger().handlers:  # the library's log lines (one per execution) go to stderr
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    outcomes: list[Any] = []

    def show(outcome: Any) -> None:
        outcomes.append(outcome)
        if outcome.reason == "owned" and not args.once:
            return  # a polling worker sees live workers' executions every sweep: not news
        print(json.dumps(outcome.to_dict()) if args.json else outcome.line(), file=out, flush=True)

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await recover_orphans(args.factory, config, concurrency=args.concurrency, graph_ids=args.graph_ids,
                                  wait=args.wait, poll_s=None if args.once else args.poll,
                                  include_failed=args.include_failed, on_outcome=show)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        print("stopped", file=out, flush=True)
    return 1 if any(not o.ok for o in outcomes) else 0

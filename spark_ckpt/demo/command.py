"""The demo's command line: its options, shared by ``spark-ckpt demo`` and ``python -m spark_ckpt.demo``.

``python -m spark_ckpt.demo [--store URL] [--crash-after N] [--work-dir DIR]`` runs the demo as
``spark-ckpt demo`` does; ``python -m spark_ckpt.demo worker ...`` is how the demo starts its worker
processes (``worker.py``).

Invariants: importing this module imports nothing heavier than argparse, so the ``spark-ckpt`` parser
can offer ``demo`` without importing asyncio or Spark; the driver is imported only when the demo
runs. This module never imports ``spark_ckpt.cli`` (the CLI imports it): what both command lines
share is in ``spark_ckpt.command_line``. Exit codes: 0 when the demo passes, 1 when it fails, 2 for
a usage or user error.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from ..command_line import PROG, Parser, add_debug_option, positive_int, run_command

DEMO_STORE = "sqlite://./demo-checkpoints.db"


def add_options(parser: argparse.ArgumentParser) -> None:
    """The demo's options, on ``spark-ckpt demo`` and on ``python -m spark_ckpt.demo`` alike."""
    parser.add_argument("--store", dest="demo_store", metavar="URL", default=None,
                        help=f"where the demo keeps its checkpoints (default: {DEMO_STORE})")
    parser.add_argument("--crash-after", metavar="N", type=positive_int, default=3,
                        help="kill the worker inside the Nth pass of the transform loop (default: 3)")
    parser.add_argument("--work-dir", metavar="DIR", default=None,
                        help="keep the demo's side files (per-visit execution logs) in DIR")


def run(args: argparse.Namespace, out: TextIO, fallback_store: str | None = None) -> int:
    """Run the demo with parsed options; ``fallback_store`` is the CLI's global ``--store``."""
    from .driver import run_demo

    store = args.demo_store or fallback_store or DEMO_STORE
    return 0 if run_demo(store, crash_after=args.crash_after, out=out, work_dir=args.work_dir) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=f"{PROG} demo")
    add_debug_option(parser)
    add_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m spark_ckpt.demo``: the demo, or (``worker ...``) one of its worker processes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        from .worker import worker_main

        return worker_main(argv[1:])
    return run_command(run, build_parser().parse_args(argv), sys.stdout)

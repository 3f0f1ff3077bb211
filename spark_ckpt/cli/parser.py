"""The ``spark-ckpt`` parser: global options, one subcommand per command, and which function runs it.

Invariants: option names, defaults and help texts are the command line's interface. Building the
parser imports no command's dependencies, only the demo's light option definitions
(``spark_ckpt.demo.command``), so ``--help`` and every command but ``demo`` start without asyncio or
Spark. Commands backed by optional modules (``export``, ``rekey``) appear only when those modules
are installed.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import TextIO

from ..command_line import PROG, Parser, add_debug_option, positive_float, positive_int
from ..demo.command import add_options as add_demo_options
from ..executions import STATUS_FILTERS
from .approvals import add_commands as add_approval_commands
from .executions import STATUS_HELP
from .history import add_commands as add_history_commands, add_show_options
from .inspection import cmd_list, cmd_show, cmd_verify
from .maintenance import cmd_export, cmd_prune, cmd_rekey
from .overhead import cmd_stats
from .stores import DEFAULT_STORE, STORE_ENV
from .worker import add_command as add_worker_command


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    # the demo package's heavy parts (asyncio, subprocesses, Spark) are imported only here
    from ..demo.command import run

    return run(args, out, fallback_store=args.store)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Inspect, verify and prune spark-ckpt checkpoints; run the crash-recovery demo.",
    )
    add_debug_option(parser)
    parser.add_argument(
        "--store", metavar="URL", default=None,
        help=f"checkpoint store URL (default: ${STORE_ENV}, else {DEFAULT_STORE}); "
             "e.g. sqlite:///abs/path.db, sqlite://rel.db, file://./dir",
    )
    keys = parser.add_argument_group("encryption keys (for encrypted stores)")
    keys.add_argument("--keys-env", metavar="NAME", default=None,
                      help="environment variable holding 'keyid:base64key,...' (default: SPARK_CKPT_KEYS)")
    keys.add_argument("--active-key", metavar="ID", default=None,
                      help="key id to encrypt with (rekey; default: SPARK_CKPT_ACTIVE_KEY or the only key)")
    keys.add_argument("--allow-plaintext", action="store_true",
                      help="with keys configured, still read unencrypted checkpoints")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="list checkpoints (newest first) or executions")
    p.add_argument("--graph", metavar="ID", help="only this graph id")
    p.add_argument("--execution", metavar="ID", help="only this execution id")
    p.add_argument("--limit", metavar="N", type=positive_int, help="at most N rows")
    p.add_argument("--executions", action="store_true", help="one line per execution with its status")
    p.add_argument("--status", choices=STATUS_FILTERS, default=None, help=STATUS_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="print a readable summary of one checkpoint")
    p.add_argument("checkpoint_id", metavar="CHECKPOINT_ID")
    p.add_argument("--json", action="store_true", help="print the decoded checkpoint as JSON")
    add_show_options(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("stats", help="what checkpointing cost each execution: checkpoints, bytes, write times "
                                     "and overhead (write time / run time)")
    p.add_argument("--graph", metavar="ID", help="only this graph id")
    p.add_argument("--execution", metavar="ID", help="only this execution id")
    p.add_argument("--limit", metavar="N", type=positive_int, help="at most N executions (newest first)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("verify", help="decode every stored checkpoint, check each can be made whole and none is "
                                      "missing; report the bad ones (exit 1 if any)")
    p.add_argument("--graph", metavar="ID", help="only this graph id")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "prune", help="delete old checkpoints (never those an unfinished execution needs to recover)"
    )
    p.add_argument("--graph", metavar="ID", help="only this graph id")
    p.add_argument("--keep", metavar="N", type=positive_int, help="keep the newest N checkpoints per graph")
    p.add_argument("--max-age", metavar="SECONDS", type=positive_float, help="delete checkpoints older than this")
    p.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    p.set_defaults(func=cmd_prune)

    add_approval_commands(sub)
    add_history_commands(sub)
    add_worker_command(sub)

    p = sub.add_parser(
        "demo", help="run a Spark workflow, SIGKILL its worker mid-run, recover in a new process, compare"
    )
    add_demo_options(p)  # the demo owns its options, so `python -m spark_ckpt.demo` takes the same ones
    p.set_defaults(func=cmd_demo)

    # Commands backed by optional modules appear only when those modules are installed.
    if _module_exists("spark_ckpt.transfer"):
        p = sub.add_parser("export", help="copy checkpoints from one store to another, verifying each")
        p.add_argument("--from", dest="source", metavar="URL", required=True, help="source store URL")
        p.add_argument("--to", dest="target", metavar="URL", required=True, help="destination store URL")
        p.add_argument("--graph", metavar="ID", help="only this graph id")
        p.set_defaults(func=cmd_export)
    if _module_exists("spark_ckpt.codec.rekey"):
        p = sub.add_parser("rekey", help="re-encrypt stored checkpoints with the current key")
        p.add_argument("--graph", metavar="ID", help="only this graph id")
        p.set_defaults(func=cmd_rekey)
    return parser


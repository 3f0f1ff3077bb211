"""``spark-ckpt``: inspect, verify and prune stored checkpoints, and run the crash-recovery demo.

    spark-ckpt list [--graph ID] [--execution ID] [--limit N] [--executions] [--status STATUS]
    spark-ckpt show CHECKPOINT_ID [--whole] | FILE.ckpt (a file written by save_checkpoint(): no store needed)
    spark-ckpt diff A B                                (state, node and visit changes from A to B)
    spark-ckpt stats [--graph ID] [--execution ID] [--limit N]
    spark-ckpt timeline EXECUTION_ID                   (visits per node over time, attempts, replays)
    spark-ckpt report EXECUTION_ID -o FILE.html        (the same as one self-contained HTML page)
    spark-ckpt verify [--graph ID]
    spark-ckpt prune [--graph ID] [--keep N] [--max-age SECONDS] [--dry-run] [--yes]
    spark-ckpt approvals list [--graph ID] [--all]
    spark-ckpt approvals approve|reject APPROVAL_ID [--by NAME] [--notes TEXT] [--graph ID]
    spark-ckpt worker MODULE:FACTORY [--once] [--concurrency N] [--graph ID]...
    spark-ckpt demo [--store URL] [--crash-after N] [--work-dir DIR]
    spark-ckpt rekey [--graph ID]                      (re-encrypt under the active key)
    spark-ckpt export [--from URL] --to URL [--graph ID] (when spark_ckpt.transfer is installed)
    spark-ckpt --version

Global options, accepted before or after the command: ``--store URL``, ``--json`` (every command but
``demo``), ``--read-only``, ``--color auto|always|never`` / ``--no-color``, ``--debug``, and the key
options ``--keys-env NAME``, ``--active-key ID``, ``--allow-plaintext`` (keys otherwise come from
``SPARK_CKPT_KEYS`` / ``SPARK_CKPT_ACTIVE_KEY`` as for the library).

The store defaults to ``$SPARK_CKPT_STORE``, else ``sqlite://./checkpoints.db``. The inspecting commands
(``list``, ``show``, ``stats``, ``verify``, ``approvals list``, ``prune --dry-run``, ``export``'s source)
open a store they cannot write read-only, so a store on a read-only file system or without write
permission can still be looked at; ``--read-only`` forces that for any command. Spark is only imported
by ``demo``, ``rich`` only when a table or progress bar is drawn.

Output: tables and progress bars through ``rich`` (``terminal``): colour and a live bar on a terminal
only; in a pipe or log, plain lines and a progress line per tenth of the work. A reader closing the
pipe early (``spark-ckpt list | head -1``) ends the command quietly with exit code 141.

``prune`` shows what it would delete as one row per execution (graph, execution, checkpoints, bytes),
then asks on a terminal; ``--yes`` deletes without asking; with stdin not a terminal and no ``--yes``
it refuses (exit 2) and deletes nothing. It deletes only checkpoints the plan it showed listed.

Exit codes: 0 success, 1 ``verify`` found unreadable checkpoints (or the demo failed, or a prune was
declined), 2 any error (one ``spark-ckpt: error: ...`` line on stderr, no traceback), 141 the output
pipe was closed early. ``--debug`` prints the traceback instead of that line.

Where things are: ``parser`` (the options, and which function runs each command: see ``build_parser``
to add one), ``inspection`` (``list``, ``show``, ``verify``: read only), ``history`` (``show --whole``, ``diff``: read
only), ``overhead`` (``stats``: write
times, read only), ``timeline`` (``timeline``, ``report``: read only), ``approvals`` (approval requests of waiting executions), ``maintenance``
(``prune``, ``export``, ``rekey``: change stores), ``stores`` (opening a store and a codec from the
options), ``output`` (tables, previews, JSON), ``terminal`` (colour, progress, prompts). The demo is
``spark_ckpt.demo``, which never imports this package; the conventions both command lines share are in
``spark_ckpt.command_line``.
"""

from __future__ import annotations

import sys
from typing import Sequence, TextIO

from ..command_line import PROG, run_command
from ..demo.command import DEMO_STORE
from .inspection import cmd_list, cmd_show, cmd_verify
from .maintenance import cmd_export, cmd_prune, cmd_rekey
from .output import PREVIEW_WIDTH
from .parser import build_parser, cmd_demo
from .stores import DEFAULT_STORE, STORE_ENV


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Entry point of the ``spark-ckpt`` console script; returns the exit code."""
    from . import terminal

    parser = build_parser()
    args = parser.parse_args(argv)
    terminal.configure(args.color)
    return run_command(args.func, args, out or sys.stdout)


__all__ = [
    "DEFAULT_STORE", "DEMO_STORE", "PREVIEW_WIDTH", "PROG", "STORE_ENV", "build_parser", "cmd_demo", "cmd_export",
    "cmd_list", "cmd_prune", "cmd_rekey", "cmd_show", "cmd_verify", "main",
]

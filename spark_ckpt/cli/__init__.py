"""``spark-ckpt``: inspect, verify and prune stored checkpoints, and run the crash-recovery demo.

    spark-ckpt [--store URL] list [--graph ID] [--execution ID] [--limit N] [--executions] [--json]
    spark-ckpt [--store URL] show CHECKPOINT_ID [--whole] [--json]
    spark-ckpt [--store URL] diff A B [--json]                  (state, node and visit changes from A to B)
    spark-ckpt [--store URL] stats [--graph ID] [--execution ID] [--limit N] [--json]
    spark-ckpt [--store URL] verify [--graph ID]
    spark-ckpt [--store URL] prune [--graph ID] [--keep N] [--max-age SECONDS] [--dry-run]
    spark-ckpt [--store URL] approvals list [--graph ID] [--all] [--json]
    spark-ckpt [--store URL] approvals approve|reject APPROVAL_ID [--by NAME] [--notes TEXT] [--graph ID]
    spark-ckpt [--store URL] worker MODULE:FACTORY [--once] [--concurrency N] [--graph ID]... [--json]
    spark-ckpt demo [--store URL] [--crash-after N] [--work-dir DIR]
    spark-ckpt [--store URL] rekey [--graph ID]                  (re-encrypt under the active key)
    spark-ckpt export --from URL --to URL [--graph ID]          (when spark_ckpt.transfer is installed)

Encrypted stores: keys come from ``SPARK_CKPT_KEYS`` / ``SPARK_CKPT_ACTIVE_KEY`` as for the library, or
from ``--keys-env NAME`` and ``--active-key ID``; ``--allow-plaintext`` also reads unencrypted ones.

The store defaults to ``$SPARK_CKPT_STORE``, else ``sqlite://./checkpoints.db``. Spark is only
imported by ``demo``: the other commands start in well under a second.

Exit codes: 0 success, 1 ``verify`` found unreadable checkpoints (or the demo failed), 2 any error
(one ``spark-ckpt: error: ...`` line on stderr, no traceback). ``spark-ckpt --debug COMMAND ...`` prints
the traceback instead of that line.

Where things are: ``parser`` (the options, and which function runs each command), ``inspection``
(``list``, ``show``, ``verify``: read only), ``history`` (``show --whole``, ``diff``: read only), ``overhead`` (``stats``: write times, read only), ``approvals`` (approval requests of waiting executions), ``maintenance`` (``prune``, ``export``, ``rekey``: change
stores), ``stores`` (opening a store and a codec from the options), ``output`` (tables, previews,
JSON, progress bars). The demo is ``spark_ckpt.demo``, which never imports this package; the
conventions both command lines share are in ``spark_ckpt.command_line``.
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
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(args.func, args, out or sys.stdout)


__all__ = [
    "DEFAULT_STORE", "DEMO_STORE", "PREVIEW_WIDTH", "PROG", "STORE_ENV", "build_parser", "cmd_demo", "cmd_export",
    "cmd_list", "cmd_prune", "cmd_rekey", "cmd_show", "cmd_verify", "main",
]

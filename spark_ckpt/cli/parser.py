"""The ``spark-ckpt`` parser: global options, one subcommand per command, and which function runs it.

Invariants: option names, defaults and help texts are the command line's interface. Building the
parser imports no command's dependencies, only the demo's light option definitions
(``spark_ckpt.demo.command``), so ``--help`` and every command but ``demo`` start without asyncio or
Spark. Commands backed by optional modules (``export``, ``rekey``) appear only when those modules
are installed. The global options (``add_global_options``) are accepted before or after any command,
nested ones included: every subcommand's parser is a ``CommandParser``.

Adding a command: write ``add_commands(sub)`` next to the command (``p = sub.add_parser(name,
help=...)``, its own options, ``p.set_defaults(func=handler)`` with ``handler(args, out) -> int``)
and list it in ``COMMANDS``. ``--json``, ``--store`` and the others come with ``sub.add_parser``; read
them as ``args.json``, ``args.store`` ... (don't declare them again; if a command does, it still
works). Print results to ``out`` with ``output.table`` / ``print_json``, progress with
``output.ProgressBar``, and open the store with ``stores.open_for(args, inspect=True)`` when the
command only reads.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any, Callable, Sequence, TextIO

from ..command_line import PROG, Parser, positive_float, positive_int
from ..errors import ConfigError
from ..demo.command import add_options as add_demo_options
from ..executions import STATUS_FILTERS
from .approvals import add_commands as add_approval_commands
from .executions import STATUS_HELP
from .history import add_commands as add_history_commands, add_show_options
from .inspection import cmd_list, cmd_show, cmd_verify
from .maintenance import cmd_export, cmd_prune, cmd_rekey
from .overhead import cmd_stats
from .stores import DEFAULT_STORE, STORE_ENV
from .terminal import COLOR_CHOICES
from .timeline import add_commands as add_timeline_commands
from .worker import add_command as add_worker_command


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    # the demo package's heavy parts (asyncio, subprocesses, Spark) are imported only here
    from ..demo.command import run

    if args.json:  # the demo narrates a crash and a recovery for people; it has no JSON form
        raise ConfigError("demo has no --json output; run it without --json")
    return run(args, out, fallback_store=args.store)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


class CommandParser(Parser):
    """The parser of one subcommand: it takes the global options too, so they may come before or
    after the subcommand (``spark-ckpt list --store URL`` = ``spark-ckpt --store URL list``).

    Here the global options default to ``SUPPRESS``: absent after the subcommand, they leave what
    was given before it (or the top-level default) alone. A command that declares one of them
    itself (an older ``--json``) replaces it, keeping the ``SUPPRESS`` default for the same reason.
    Nested subcommands (``approvals list``) are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("conflict_handler", "resolve")
        super().__init__(*args, **kwargs)
        add_global_options(self, defaults=False)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        if set(args) & _GLOBAL_FLAGS and kwargs.get("dest", _global_dest(args)) == _global_dest(args):
            kwargs["default"] = argparse.SUPPRESS
        return super().add_argument(*args, **kwargs)


def _global_dest(flags: Sequence[str]) -> str | None:
    long = next((f for f in flags if f.startswith("--")), None)
    return long[2:].replace("-", "_") if long else None


class _VersionAction(argparse.Action):
    """``--version``: spark-ckpt's version and the installed Spark's, read from its metadata (Spark
    itself is not imported)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version_text())  # (to stdout: it is the answer, not a diagnostic)
        parser.exit(0)


def version_text() -> str:
    from importlib import metadata

    from .. import __version__

    try:
        spark = f"spark {metadata.version('spark')}"
    except metadata.PackageNotFoundError:
        spark = "spark not installed"
    return f"{PROG} {__version__} ({spark})"


def add_global_options(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """The options every command takes, before or after its name. ``defaults=False`` (a subcommand's
    parser): each defaults to ``SUPPRESS``, so leaving it out there keeps the top-level value."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    glob = parser.add_argument_group("global options (before or after the command)")
    glob.add_argument("--store", metavar="URL", default=default(None),
                      help=f"checkpoint store URL (default: ${STORE_ENV}, else {DEFAULT_STORE}); "
                           "e.g. sqlite:///abs/path.db, sqlite://rel.db, file://./dir")
    glob.add_argument("--json", action="store_true", default=default(False),
                      help="print the result as JSON (errors stay one line on stderr)")
    glob.add_argument("--read-only", action="store_true", default=default(False),
                      help="open the store read-only (inspecting commands do so by themselves when it "
                           "cannot be written); a command that writes then fails with one line")
    glob.add_argument("--color", choices=COLOR_CHOICES, default=default("auto"),
                      help="colour in tables and progress bars (auto: only on a terminal, and not when "
                           "NO_COLOR is set)")
    glob.add_argument("--no-color", dest="color", action="store_const", const="never", default=default("auto"),
                      help="the same as --color never")
    glob.add_argument("--debug", action="store_true", default=default(False),
                      help="on an error, print its traceback instead of the one-line message")
    keys = parser.add_argument_group("encryption keys (for encrypted stores; before or after the command)")
    keys.add_argument("--keys-env", metavar="NAME", default=default(None),
                      help="environment variable holding 'keyid:base64key,...' (default: SPARK_CKPT_KEYS)")
    keys.add_argument("--active-key", metavar="ID", default=default(None),
                      help="key id to encrypt with (rekey; default: SPARK_CKPT_ACTIVE_KEY or the only key)")
    keys.add_argument("--allow-plaintext", action="store_true", default=default(False),
                      help="with keys configured, still read unencrypted checkpoints")


_GLOBAL_FLAGS = frozenset({
    "--store", "--json", "--read-only", "--color", "--no-color", "--debug", "--keys-env", "--active-key",
    "--allow-plaintext",
})


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. A command registers with a function ``add_commands(sub)`` that calls
    ``sub.add_parser(name, help=...)`` (a ``CommandParser``: the global options come with it) and
    ``set_defaults(func=handler)``, where ``handler(args, out) -> exit code``; it is listed in
    ``COMMANDS`` below. Keep its module's top-level imports light: every start builds every parser."""
    parser = Parser(
        prog=PROG,
        description="Inspect, verify and prune spark-ckpt checkpoints; run the crash-recovery demo.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the versions of spark-ckpt and Spark")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=CommandParser)
    for add_commands in COMMANDS:
        add_commands(sub)
    return parser


def add_inspection_commands(sub: Any) -> None:
    p = sub.add_parser("list", help="list checkpoints (newest first) or executions")
    p.add_argument("--graph", metavar="ID", help="only this graph id")
    p.add_argument("--execution", metavar="ID", help="only this execution id")
    p.add_argument("--limit", metavar="N", type=positive_int, help="at most N rows")
    p.add_argument("--executions", action="store_true", help="one line per execution with its status")
    p.add_argument("--status", choices=STATUS_FILTERS, default=None, help=STATUS_HELP)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="print a readable summary of one stored checkpoint, or of a .ckpt file "
                                    "written by save_checkpoint() (no store needed)")
    p.add_argument("checkpoint_id", metavar="CHECKPOINT_ID|FILE.ckpt")
    add_show_options(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("stats", help="what checkpointing cost each execution: checkpoints, bytes, write times "
                                     "and overhead (write time / run time)")
    p.add_argument("--graph", metavar="ID", help="only this graph id")
    p.add_argument("--execution", metavar="ID", help="only this execution id")
    p.add_argument("--limit", metavar="N", type=positive_int, help="at most N executions (newest first)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("verify", help="decode every stored checkpoint, check each can be made whole and none is "
                                      "missing; report the bad ones (exit 1 if any)")
    p.add_argument("--graph", metavar="ID", help="only this graph id")
    p.set_defaults(func=cmd_verify)


def add_prune_command(sub: Any) -> None:
    p = sub.add_parser(
        "prune", help="delete old checkpoints (never those an unfinished execution needs to recover)"
    )
    p.add_argument("--graph", metavar="ID", help="only this graph id")
    p.add_argument("--keep", metavar="N", type=positive_int, help="keep the newest N checkpoints per graph")
    p.add_argument("--max-age", metavar="SECONDS", type=positive_float, help="delete checkpoints older than this")
    p.add_argument("--dry-run", action="store_true",
                   help="only show what would be deleted (a table per execution); changes nothing")
    p.add_argument("-y", "--yes", action="store_true",
                   help="delete without asking (needed when stdin is not a terminal, e.g. in scripts)")
    p.set_defaults(func=cmd_prune)


def add_demo_command(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="run a Spark workflow, SIGKILL its worker mid-run, recover in a new process, compare"
    )
    add_demo_options(p)  # the demo owns its options, so `python -m spark_ckpt.demo` takes the same ones
    p.set_defaults(func=cmd_demo)


def add_maintenance_commands(sub: Any) -> None:
    if _module_exists("spark_ckpt.transfer"):
        p = sub.add_parser("export", help="copy checkpoints from one store to another, verifying each")
        p.add_argument("--from", dest="source", metavar="URL", default=None,
                       help="source store URL (default: the --store one)")
        p.add_argument("--to", dest="target", metavar="URL", required=True, help="destination store URL")
        p.add_argument("--graph", metavar="ID", help="only this graph id")
        p.set_defaults(func=cmd_export)
    if _module_exists("spark_ckpt.codec.rekey"):
        p = sub.add_parser("rekey", help="re-encrypt stored checkpoints with the current key")
        p.add_argument("--graph", metavar="ID", help="only this graph id")
        p.set_defaults(func=cmd_rekey)


#: every command, in the order ``--help`` lists them; add yours here (see ``build_parser``)
COMMANDS: list[Callable[[Any], None]] = [
    add_inspection_commands, add_prune_command, add_approval_commands, add_history_commands,
    add_timeline_commands, add_worker_command, add_demo_command, add_maintenance_commands,
]

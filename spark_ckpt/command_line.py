"""What every spark-ckpt command line shares: the program name, option value types, and exit codes.

Two command lines follow these conventions: ``spark-ckpt`` (``spark_ckpt.cli``) and the demo's own
``python -m spark_ckpt.demo`` (``spark_ckpt.demo.command``), which ``spark-ckpt demo`` reuses. Both
import this module, so neither imports the other.

Invariants: a command returns its exit code; a ``SparkCkptError`` it raises becomes exit code 2 and
one ``spark-ckpt: error: ...`` line on stderr (no traceback), Ctrl-C exit code 130. argparse reports
bad options itself (exit code 2). Importing this module imports nothing heavier than argparse.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, TextIO

from .errors import SparkCkptError

PROG = "spark-ckpt"


def positive(convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, and require a value > 0."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return value

    return parse


positive_int = positive(int, "a whole number")
positive_float = positive(float, "a number of seconds")


def run_command(handler: Callable[[argparse.Namespace, TextIO], int], args: argparse.Namespace, out: TextIO) -> int:
    """Run one parsed command and turn the errors a user can act on into exit codes."""
    try:
        return handler(args, out)
    except SparkCkptError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130

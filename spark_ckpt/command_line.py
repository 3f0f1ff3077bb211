"""What every spark-ckpt command line shares: the program name, option value types, and exit codes.

Two command lines follow these conventions: ``spark-ckpt`` (``spark_ckpt.cli``) and the demo's own
``python -m spark_ckpt.demo`` (``spark_ckpt.demo.command``), which ``spark-ckpt demo`` reuses. Both
import this module, so neither imports the other.

Invariants: a command returns its exit code. Every failure is exit code 2 and one
``spark-ckpt: error: ...`` line on stderr, no traceback: a ``SparkCkptError`` with its message, any
other exception with its type and message and a pointer to ``--debug``, which prints the traceback
instead. Bad options are one such line too (``Parser``); Ctrl-C is exit code 130; a reader closing
the output pipe early ends the command quietly with 141 (as SIGPIPE would, without a traceback). Importing this
module imports nothing heavier than argparse.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any, Callable, NoReturn, TextIO

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


class Parser(argparse.ArgumentParser):
    """argparse, reporting a bad option as one ``spark-ckpt: error:`` line (exit code 2) like every
    other failure, instead of the usage text first (subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print its traceback instead of the one-line message")


def run_command(handler: Callable[[argparse.Namespace, TextIO], int], args: argparse.Namespace, out: TextIO) -> int:
    """Run one parsed command; turn every error into exit code 2 and one line on stderr (the
    traceback with ``--debug``), Ctrl-C into 130."""
    try:
        code = handler(args, out)
        out.flush()  # (a reader that went away is found here, not at exit where it cannot be handled)
        return code
    except BrokenPipeError:
        return closed_pipe(out)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "debug", False):
            traceback.print_exc(file=sys.stderr)
        elif isinstance(exc, SparkCkptError):
            print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        else:  # a bug, or something nobody anticipated: still one line, and how to see more
            print(f"{PROG}: error: unexpected {type(exc).__name__}: {one_line(exc)} "
                  "(run with --debug for the traceback)", file=sys.stderr)
        return 2


#: the exit code of a command whose reader closed the pipe early, as a shell reports one killed by SIGPIPE
CLOSED_PIPE_EXIT = 128 + 13


def closed_pipe(out: TextIO) -> int:
    """The reader of ``out`` went away (``spark-ckpt list | head -1``): stop quietly. What is still
    buffered would fail again when Python flushes at exit and print "Exception ignored ...", so the
    stream's descriptor is pointed at /dev/null first (the recipe of Python's ``signal`` docs)."""
    import os

    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO)
        return CLOSED_PIPE_EXIT
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    return CLOSED_PIPE_EXIT


def one_line(message: object) -> str:
    """``message`` as one line: an error line must not be split (a validation error runs to pages)."""
    try:
        text = str(message)
    except Exception:  # a message that cannot be rendered must not become the next error
        text = f"<{type(message).__name__} message that cannot be shown>"
    return " ".join(text.split()) or "(no message)"

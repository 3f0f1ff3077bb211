"""How the commands print: local times, one-line previews, aligned tables, JSON and progress bars.

Invariants: results go to the ``out`` stream a command is given (tests pass a ``StringIO``); only a
progress bar writes to stderr, so ``--json`` output and piped tables stay clean. Times are printed
in the local time zone, to the second, as ISO 8601.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any, Sequence, TextIO

PREVIEW_WIDTH = 70


def local_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def preview(value: Any, width: int = PREVIEW_WIDTH) -> str:
    """One-line JSON-ish rendering of ``value``, cut to ``width`` characters."""
    import orjson

    try:
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def table(rows: list[Sequence[Any]], headings: Sequence[str], out: TextIO, indent: str = "") -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headings)]
    for row in [list(headings), *cells]:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)


def print_json(data: Any, out: TextIO) -> None:
    import orjson

    out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")


class ProgressBar:
    """A one-line progress bar on stderr: ``progress(done, total)``."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.shown = False
        self.total: int | None = None

    def __call__(self, done: int, total: int | None = None, *_: Any) -> None:
        self.total = total
        if total:
            filled = int(30 * done / total)
            text = f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
        else:
            text = f"\r{self.label} {done}"
        self.stream.write(text)
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()

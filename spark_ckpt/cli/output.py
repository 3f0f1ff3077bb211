"""How the commands print: local times, one-line previews, aligned tables, JSON and progress bars
(drawn by ``rich`` as ``terminal`` decides: colour and live bars only on a terminal).

Invariants: results go to the ``out`` stream a command is given (tests pass a ``StringIO``); only a
progress bar and prompts write to stderr, so ``--json`` output and piped tables stay clean. Times are printed
in the local time zone, to the second, as ISO 8601. Nothing stored can make printing fail: a time
out of range, a value JSON cannot hold, nesting too deep, each prints as a marked stand-in.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Sequence, TextIO

from .terminal import Progress, draw

PREVIEW_WIDTH = 70


#: ``print_json`` writes deeper values as their ``repr`` (orjson stops at 255 levels)
MAX_JSON_DEPTH = 200


def local_time(timestamp: Any) -> str:
    try:
        return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):  # not a time, or outside what the OS can show
        return f"(invalid time {_short_repr(timestamp)})"


def preview(value: Any, width: int = PREVIEW_WIDTH) -> str:
    """One-line JSON-ish rendering of ``value``, cut to ``width`` characters."""
    import orjson

    from ..codec.values import is_plain

    try:  # (orjson would write NaN as null and a tuple as a list: those are shown as what they are)
        shown = value if is_plain(value) else _plain(value, MAX_JSON_DEPTH)
        text = orjson.dumps(shown, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # (orjson's errors are TypeErrors: a foreign type, a huge int, nesting too deep)
        text = _short_repr(value, width)
    return text if len(text) <= width else text[: width - 3] + "..."


def _short_repr(value: Any, width: int = 40) -> str:
    """A bounded ``repr``: reprlib cuts long and deep values, which plain ``repr`` walks in full."""
    import reprlib

    shortened = reprlib.Repr(maxlevel=4, maxstring=width, maxother=width, maxlong=width)
    try:
        return shortened.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _text(value: str) -> str:
    """``value``, with what UTF-8 cannot hold (lone surrogates) escaped."""
    try:
        value.encode()
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode()


#: how a status reads at a glance on a colour terminal
STATUS_STYLES = {
    "completed": "green", "replayable": "green", "failed": "bold red", "running": "yellow",
    "interrupted": "yellow", "waiting": "cyan", "pending": "cyan", "approved": "green", "rejected": "red",
}


def table(rows: list[Sequence[Any]], headings: Sequence[str], out: TextIO, indent: str = "") -> None:
    """Aligned columns, headings first (bold on a terminal), a status column coloured by its value.
    Off a terminal: plain text, columns two spaces apart, no trailing blanks."""
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1), header_style="bold")
    for heading in headings:
        grid.add_column(heading, no_wrap=False, overflow="fold")
    coloured = {i for i, h in enumerate(headings) if h in ("status", "on recovery")}
    for row in rows:
        grid.add_row(*(Text(str(c), style=STATUS_STYLES.get(str(c), "") if i in coloured else "")
                       for i, c in enumerate(row)))
    draw(Padding(grid, (0, 0, 0, len(indent))) if indent else grid, out)


def print_json(data: Any, out: TextIO) -> None:
    """``data`` as indented JSON. What JSON cannot hold (an integer past 64 bits, a float that is not
    finite, nesting past ``MAX_JSON_DEPTH``, another type) is written as a string of its ``repr``."""
    import orjson

    from ..codec.values import is_plain

    option = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    try:
        if not is_plain(data):  # orjson would write NaN as null and a tuple as a list
            raise TypeError("not plain JSON")
        text = orjson.dumps(data, option=option).decode()
    except TypeError:
        text = orjson.dumps(_plain(data, MAX_JSON_DEPTH), option=option).decode()
    out.write(text + "\n")


def _plain(value: Any, depth: int) -> Any:
    """``value`` with everything orjson refuses or changes replaced by a string (see ``print_json``)."""
    if isinstance(value, str):
        return _text(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else _short_repr(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth <= 0:
        return _short_repr(value)
    if isinstance(value, dict):
        return {_text(k) if isinstance(k, str) else _short_repr(k): _plain(v, depth - 1) for k, v in value.items()}
    if type(value) is list:
        return [_plain(v, depth - 1) for v in value]
    return _short_repr(value)  # (a tuple, a set, a datetime ... as its repr: what it is, not a look-alike)


#: the progress reporter of ``export`` and ``rekey`` (``terminal.Progress``)
ProgressBar = Progress

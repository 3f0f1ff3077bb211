"""Where ``spark-ckpt`` prints and how: colour and live progress on a terminal, plain text everywhere else.

Tables and progress bars are drawn by ``rich``. What decides how they look:

* colour: ``--color always`` / ``--color never`` (``--no-color``) when given; else off when ``NO_COLOR``
  is set to anything non-empty (https://no-color.org) or ``TERM=dumb``; else on only when the stream is
  a terminal;
* progress: a live bar (redrawn with ``\\r``) only when stderr is a terminal; in a pipe or a log, one
  line at each tenth of the total and one at the end, so a log never holds a line kilobytes long.

Invariants: output that is not a terminal holds no ANSI code, no ``\\r`` and no trailing blanks, and
is not cut to a terminal's width (a piped table keeps its whole cells). ``rich`` is imported only when
something is drawn, so ``--help`` and ``--version`` do not pay for it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

COLOR_CHOICES = ("auto", "always", "never")
#: the process's ``--color`` choice (``configure``)
_color = "auto"
#: a piped table is not wrapped to a terminal's width; wider cells than this still fold
_PIPE_WIDTH = 100_000


def configure(color: str | None) -> None:
    """Apply the ``--color`` option for the rest of this process."""
    global _color
    _color = color if color in COLOR_CHOICES else "auto"


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # not a file, or closed
        return False


def color_enabled(stream: Any) -> bool:
    if _color != "auto":
        return _color == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return is_terminal(stream)


def console(stream: TextIO) -> Any:
    """A rich console writing to ``stream`` with colour as decided above. Data is never read as
    markup (a value ``[b]x[/b]`` prints as itself)."""
    from rich.console import Console

    colour = color_enabled(stream)
    live = is_terminal(stream)
    return Console(
        file=stream, force_terminal=colour or live, no_color=not colour, color_system="auto" if colour else None,
        highlight=False, emoji=False, markup=False, width=None if live else _PIPE_WIDTH, soft_wrap=not live,
    )


def draw(renderable: Any, out: TextIO) -> None:
    """Print a rich renderable to ``out``; off a terminal, as plain lines without trailing blanks."""
    if is_terminal(out) or color_enabled(out):
        console(out).print(renderable)
        return
    import io

    buffer = io.StringIO()
    console(buffer).print(renderable)
    out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


class Progress:
    """``progress(done, total)`` as the long commands report it, drawn on stderr.

    On a terminal: a rich progress bar. Elsewhere: ``label: done/total`` once per tenth of the total
    (every ``every`` items when the total is unknown), and once at the end (``finish``)."""

    def __init__(self, label: str, stream: TextIO | None = None, *, every: int = 1000) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.done = 0
        self.total: int | None = None
        self._bar: Any = None
        self._task: Any = None
        self._printed_step = 0  # the last tenth (or block of ``every``) a line was printed for
        self._printed_done: int | None = None

    def __call__(self, done: int, total: int | None = None, *_: Any) -> None:
        self.done, self.total = done, total
        if is_terminal(self.stream):
            self._draw_bar()
            return
        step = (10 * done // total) if total else done // self.every
        if step > self._printed_step:
            self._printed_step = step
            self._line()

    def _draw_bar(self) -> None:
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console(self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total or None)
        self._bar.update(self._task, completed=self.done, total=self.total or None)

    def _line(self) -> None:
        of = f"/{self.total}" if self.total else ""
        self.stream.write(f"{self.label}: {self.done}{of}\n")
        self.stream.flush()
        self._printed_done = self.done

    def finish(self) -> None:
        """End the bar (or print the final line if the last one printed was not the end)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif (self.done or self.total) and self._printed_done != self.done:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()


def confirm(question: str, *, stdin: TextIO | None = None, stream: TextIO | None = None) -> bool:
    """Ask ``question [y/N]`` on stderr and read the answer from stdin; anything but yes is no."""
    stdin = stdin if stdin is not None else sys.stdin
    stream = stream if stream is not None else sys.stderr
    stream.write(f"{question} [y/N] ")
    stream.flush()
    answer = stdin.readline()
    return answer.strip().lower() in ("y", "yes")

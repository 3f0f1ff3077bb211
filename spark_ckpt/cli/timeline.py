"""``spark-ckpt timeline EXEC`` (a drawing in the terminal) and ``spark-ckpt report EXEC -o run.html``
(one self-contained HTML page): what happened to one execution (``spark_ckpt.timeline``).

Invariants: read only. The drawing is plain text, the same in a pipe as on a terminal (one row per
node, each attempt on its own stretch of the time axis, ``!`` where the process stopped); with
``--json`` the timeline's data. The report holds no reference to anything outside the file.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, TextIO

from .output import local_time, print_json
from .stores import make_codec, open_for, read_only

#: the character each kind of visit is drawn with
MARKS = {"live": "#", "replayed": "=", "skipped": "-", "discarded": "~"}
FAILED_MARK, CHECKPOINT_MARK, STOP_MARK = "X", "^", "!"
CHART_WIDTH, GAP = 64, 3


def add_commands(sub: Any) -> None:
    p = sub.add_parser("timeline", help="draw what happened to one execution: visits per node over time, "
                                        "attempts, replayed and live visits, failures, checkpoints")
    p.add_argument("execution_id", metavar="EXECUTION_ID")
    p.set_defaults(func=cmd_timeline)  # (--json, a global option: the timeline's data)
    p = sub.add_parser("report", help="write one self-contained HTML page charting an execution's timeline")
    p.add_argument("execution_id", metavar="EXECUTION_ID")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="the HTML file to write")
    p.set_defaults(func=cmd_report)


def _timeline(args: argparse.Namespace) -> Any:
    from ..timeline import build_timeline

    backend = open_for(args, inspect=True)
    try:
        return build_timeline(backend, make_codec(args), args.execution_id)
    finally:
        backend.close()


@read_only
def cmd_timeline(args: argparse.Namespace, out: TextIO) -> int:
    timeline = _timeline(args)
    if args.json:
        print_json(timeline.to_data(), out)
        return 0
    emit(draw(timeline), out, chart_rows=range(3, 5 + len(timeline.nodes)),
         chart_from=name_width(timeline.nodes) + 2)
    return 0


#: colours of the chart's marks on a terminal
STYLES = {"#": "green", "=": "bright_blue", "-": "bright_black", "~": "yellow", FAILED_MARK: "bold red",
          STOP_MARK: "red", CHECKPOINT_MARK: "magenta", "|": "bold"}


def emit(lines: list[str], out: TextIO, *, chart_rows: range, chart_from: int) -> None:
    """Print ``lines``, the chart's marks coloured when colour is on (``terminal.color_enabled``:
    ``--color``, ``NO_COLOR``, a terminal); otherwise, or without ``rich``, the same plain text."""
    from .terminal import color_enabled

    try:
        if color_enabled(out):
            from rich.text import Text

            from .terminal import console

            screen = console(out)
        else:
            screen = None
    except ImportError:
        screen = None
    if screen is None:
        for line in lines:
            print(line, file=out)
        return
    for number, line in enumerate(lines):
        text = Text(line)
        if number in chart_rows:
            for at in range(chart_from, len(line)):  # (not the node names)
                style = STYLES.get(line[at])
                if style:
                    text.stylize(style, at, at + 1)
        screen.print(text)


@read_only
def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    from ..timeline_html import render

    page = render(_timeline(args))
    path = os.path.abspath(args.output)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    if args.json:
        print_json({"path": path, "bytes": len(page.encode())}, out)
    else:
        print(f"wrote {path} ({len(page.encode())} bytes)", file=out)
    return 0


def summary(timeline: Any) -> str:
    return (f"graph {timeline.graph_id} · execution {timeline.execution_id} · {timeline.status} · "
            f"{len(timeline.attempts)} attempt(s) · {len(timeline.visits)} visits "
            f"({timeline.count('live')} live, {timeline.count('replayed')} replayed) · "
            f"{len(timeline.checkpoints)} checkpoints, {human_bytes(timeline.total_bytes)}")


def draw(timeline: Any) -> list[str]:
    """The timeline as plain-text lines (see the module docstring)."""
    from ..timeline import Layout

    layout = Layout(timeline, CHART_WIDTH, GAP)
    nodes = timeline.nodes
    width = name_width(nodes)

    def column(t: float, attempt: int) -> int:
        return min(int(layout.x(t, attempt)), CHART_WIDTH - 1)

    def blank() -> list[str]:
        row = [" "] * CHART_WIDTH
        for before, after in zip(layout.order, layout.order[1:]):  # between attempts: the process stopped
            for x in range(math.ceil(layout.segments[before].x1), int(layout.segments[after].x0)):
                row[x] = STOP_MARK if _stopped(timeline, after) else " "
        return row

    rows = {node: blank() for node in nodes}
    for visit in timeline.visits:
        row = rows[visit.node]
        first, last = column(visit.start, visit.attempt), column(visit.end, visit.attempt)
        for x in range(first, last + 1):
            row[x] = MARKS[visit.shown_as]
    for failure in timeline.failures:
        if failure.node in rows:
            rows[failure.node][column(failure.time, failure.attempt)] = FAILED_MARK
    ticks = blank()
    for mark in timeline.checkpoints:
        ticks[column(mark.time, mark.attempt)] = CHECKPOINT_MARK
    header = [" "] * CHART_WIDTH
    for n in layout.order:
        label = "forked from" if n < 0 else ("first run" if n == 0 else f"recovery {n}")
        x = int(layout.segments[n].x0)
        for i, ch in enumerate(("|" + label)[: CHART_WIDTH - x]):
            header[x + i] = ch
    lines = [summary(timeline), f"from {local_time(timeline.started_at)} to {local_time(timeline.ended_at)} "
                                f"({_seconds(timeline.ended_at - timeline.started_at)}); each attempt is drawn "
                                "on its own stretch of the time axis", ""]
    lines.append(" " * (width + 2) + "".join(header).rstrip())
    for node in nodes:
        lines.append(f"{_cut(node, width):<{width}}  {''.join(rows[node]).rstrip()}")
    lines.append(f"{'checkpoints':<{width}}  {''.join(ticks).rstrip()}")
    lines.append("")
    lines.extend(_attempt_lines(timeline))
    for failure in timeline.failures:
        where = f"{failure.node}#{failure.index}" if failure.node else "outside a node visit"
        lines.append(f"failed in {where} (attempt {failure.attempt}, checkpoint seq {failure.seq}): "
                     f"{failure.error_type}: {failure.error}")
    if timeline.forked_from:
        lines.append(f"forked from checkpoint {timeline.forked_from}")
    if timeline.superseded_by:
        lines.append(f"superseded by execution {timeline.superseded_by} (forked from {timeline.fork_from})")
    lines.append("")
    lines.append("legend: # live   = ran before a crash, replayed by a recovery   - skipped   ~ redone after a "
                 "fallback   X failed   ! process stopped   ^ checkpoint   | attempt begins")
    return lines


def name_width(nodes: list[str]) -> int:
    return min(max([len(n) for n in nodes] + [len("checkpoints")]), 24)


def _attempt_lines(timeline: Any) -> list[str]:
    lines = []
    attempts = timeline.attempts
    for i, attempt in enumerate(attempts):
        text = (f"{attempt.label}: began {local_time(attempt.began_at)}, checkpoints seq {attempt.first_seq}"
                f"..{attempt.last_seq}")
        if attempt.frontier is not None:
            text += f", resumed seq {attempt.from_seq} from its frontier at node {attempt.frontier} (nothing replayed)"
        elif attempt.from_seq is not None:
            text += f", resumed seq {attempt.from_seq}, replayed {len(attempt.replayed)} visit(s)"
        text += f", ran {len(attempt.live)} live; {attempt.end}"
        if attempt.end == "stopped" and i + 1 < len(attempts):
            text += (f": process stopped after its last checkpoint, {_seconds(attempts[i + 1].began_at - attempt.ended_at)}"
                     " before the next attempt began")
        elif attempt.end == "running":
            text += f" (no checkpoint since {local_time(attempt.ended_at)}: still running, or stopped)"
        lines.append(text)
    return lines


def _stopped(timeline: Any, attempt_n: int) -> bool:
    return any(a.n == attempt_n and a.from_seq is not None for a in timeline.attempts)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def human_bytes(size: int) -> str:
    return f"{size} B" if size < 1024 else (f"{size / 1024:.1f} KB" if size < 1024 ** 2 else f"{size / 1024 ** 2:.1f} MB")

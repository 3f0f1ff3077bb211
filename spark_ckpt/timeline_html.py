"""One self-contained HTML page charting an execution's timeline (``spark-ckpt report``).

Nodes down, time across: a lane per node, a bar per visit coloured live / replayed / skipped /
redone, each attempt on its own stretch of the axis with its label ("first run", "recovery 1 (worker
X)"), a hatched "process stopped" band between attempts, failure marks, and checkpoint ticks whose
tooltips give seq, status and bytes. Inline CSS and SVG only: no script, no network, no external
asset. Every text from the store is escaped (``html.escape``).
"""

from __future__ import annotations

from html import escape
from .cli.output import local_time
from .cli.timeline import human_bytes, summary
from .timeline import Layout, Timeline

LANE_H, NAME_W, CHART_W, GAP_W, TOP, PAD = 30, 170, 960, 70, 58, 12
COLOURS = {"live": "#2e7d32", "replayed": "#64b5f6", "skipped": "#bdbdbd", "discarded": "#ffb74d"}
KIND_TEXT = {"live": "ran live", "replayed": "ran before the crash; replayed from the journal by recovery",
             "skipped": "skipped", "discarded": "ran, then redone after a fallback to an older checkpoint"}

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#212121}
h1{font-size:20px;margin:0 0 6px} .summary{margin:0 0 4px} .facts{color:#555;margin:0 0 14px}
.legend span{display:inline-block;margin-right:16px} .legend i{display:inline-block;width:14px;height:10px;
margin-right:5px;vertical-align:middle;border-radius:2px}
svg text{font:12px system-ui,sans-serif} .lane-name{fill:#212121} .attempt-label{font-weight:600;fill:#333}
.stop-label{fill:#b71c1c;font-weight:600} table{border-collapse:collapse;margin-top:14px}
td,th{border-bottom:1px solid #e0e0e0;padding:3px 10px;text-align:left;font-size:13px}
.failure{color:#b71c1c}
"""


def render(timeline: Timeline) -> str:
    t = timeline
    layout = Layout(t, CHART_W, GAP_W)
    nodes = t.nodes
    height = TOP + LANE_H * (len(nodes) + 1) + 40
    width = NAME_W + CHART_W + PAD * 2
    x = lambda time, attempt: NAME_W + layout.x(time, attempt)  # noqa: E731
    svg: list[str] = [
        f'<svg id="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline of execution {escape(t.execution_id)}">',
        '<defs><pattern id="stopped" width="8" height="8" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="8" height="8" fill="#ffebee"/>'
        '<line x1="0" y1="0" x2="0" y2="8" stroke="#e57373" stroke-width="3"/></pattern></defs>',
    ]
    lanes_bottom = TOP + LANE_H * (len(nodes) + 1)
    for row, node in enumerate(nodes + ["checkpoints"]):
        y = TOP + row * LANE_H
        kind = "lane" if row < len(nodes) else "lane checkpoints-lane"
        svg.append(f'<g class="{kind}" data-node="{escape(node)}">'
                   f'<rect x="{NAME_W}" y="{y}" width="{CHART_W}" height="{LANE_H}" '
                   f'fill="{"#fafafa" if row % 2 else "#f3f3f3"}"/>'
                   f'<text class="lane-name" x="{NAME_W - 8}" y="{y + LANE_H / 2 + 4}" text-anchor="end">'
                   f'{escape(_cut(node, 24))}</text></g>')
    attempts = {a.n: a for a in t.attempts}
    for n in layout.order:  # attempt boundaries and labels
        seg = layout.segments[n]
        attempt = attempts.get(n)
        label = attempt.label if attempt else (
            "before the fork (the source execution's visits)" if n < 0 else f"attempt {n} (its checkpoints were deleted)")
        x0 = NAME_W + seg.x0
        svg.append(f'<g class="attempt" data-attempt="{n}"><line x1="{x0:.1f}" y1="{TOP - 26}" x2="{x0:.1f}" '
                   f'y2="{lanes_bottom}" stroke="#424242" stroke-width="1.5"/>'
                   f'<text class="attempt-label" x="{x0 + 4:.1f}" y="{TOP - 30}">{escape(_cut(label, 70))}'
                   f'<title>{escape(label)}</title></text>'
                   f'<text x="{x0 + 4:.1f}" y="{TOP - 12}" fill="#666">{escape(local_time(seg.t0))} · '
                   f'{escape(_seconds(seg.t1 - seg.t0))}</text></g>')
    for before, after in zip(layout.order, layout.order[1:]):  # the process stopped between attempts
        a, b = attempts.get(before), attempts.get(after)
        if a is None or b is None or b.from_seq is None:
            continue
        x0, x1 = NAME_W + layout.segments[before].x1, NAME_W + layout.segments[after].x0
        gap = _seconds(b.began_at - a.ended_at)
        end = "failed" if a.end == "failed" else "process stopped"
        svg.append(f'<g class="stop" data-kind="{escape(end)}"><rect x="{x0 + 4:.1f}" y="{TOP}" '
                   f'width="{max(x1 - x0 - 8, 4):.1f}" height="{lanes_bottom - TOP}" fill="url(#stopped)">'
                   f'<title>{escape(end)} after checkpoint seq {a.last_seq}; {escape(gap)} until '
                   f'{escape(b.label)} began</title></rect>'
                   f'<text class="stop-label" x="{(x0 + x1) / 2:.1f}" y="{lanes_bottom + 16}" '
                   f'text-anchor="middle">{escape(end)}</text>'
                   f'<text x="{(x0 + x1) / 2:.1f}" y="{lanes_bottom + 30}" text-anchor="middle" '
                   f'fill="#b71c1c">{escape(gap)}</text></g>')
    row_of = {node: i for i, node in enumerate(nodes)}
    for v in t.visits:
        y = TOP + row_of[v.node] * LANE_H + 6
        x0, x1 = x(v.start, v.attempt), x(v.end, v.attempt)
        shown = v.shown_as
        tip = (f"{v.node}#{v.index} (superstep {v.superstep}): {KIND_TEXT[shown]}"
               f"{' ' + ', '.join(str(n) for n in v.replayed_by) if shown == 'replayed' else ''}; "
               f"started {local_time(v.start)}, took {_seconds(v.end - v.start)}")
        svg.append(f'<rect class="bar {shown}" data-node="{escape(v.node)}" data-index="{v.index}" '
                   f'x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 4):.1f}" height="{LANE_H - 12}" rx="2" '
                   f'fill="{COLOURS[shown]}" stroke="#fff" stroke-width="0.5"><title>{escape(tip)}</title></rect>')
    for f in t.failures:
        row = row_of.get(f.node)
        y = TOP + (row if row is not None else len(nodes)) * LANE_H + LANE_H / 2
        cx = x(f.time, f.attempt)
        where = f"{f.node}#{f.index}" if f.node else "outside a node visit"
        svg.append(f'<g class="failure-mark" data-node="{escape(f.node)}"><path d="M{cx - 7:.1f},{y - 7:.1f} '
                   f'L{cx + 7:.1f},{y + 7:.1f} M{cx + 7:.1f},{y - 7:.1f} L{cx - 7:.1f},{y + 7:.1f}" '
                   f'stroke="#c62828" stroke-width="3"/><title>failed in {escape(where)}: '
                   f'{escape(f.error_type)}: {escape(f.error)}</title></g>')
    y = TOP + len(nodes) * LANE_H
    for c in t.checkpoints:
        cx = x(c.time, c.attempt)
        svg.append(f'<g class="checkpoint" data-seq="{c.seq}" data-bytes="{c.bytes}">'
                   f'<path d="M{cx:.1f},{y + 6} l-5,{LANE_H - 12} h10 z" fill="#6a1b9a" opacity="0.8"/>'
                   f'<title>checkpoint seq {c.seq} ({escape(c.status)}): {escape(human_bytes(c.bytes))} at '
                   f'{escape(local_time(c.time))}</title></g>')
    svg.append("</svg>")
    legend = "".join(f'<span><i style="background:{COLOURS[k]}"></i>{escape(text)}</span>' for k, text in (
        ("live", "ran live"), ("replayed", "replayed by a recovery (ran before the crash)"), ("skipped", "skipped"),
        ("discarded", "redone after a fallback")))
    legend += ('<span><i style="background:#ef9a9a"></i>process stopped / failed</span>'
               '<span style="color:#c62828;font-weight:700">✕ failure</span>'
               '<span style="color:#6a1b9a">▲ checkpoint (hover: bytes)</span>')
    facts = [f"from {local_time(t.started_at)} to {local_time(t.ended_at)}"]
    if t.forked_from:
        facts.append(f"forked from checkpoint {t.forked_from}")
    if t.superseded_by:
        facts.append(f"superseded by execution {t.superseded_by}")
    rows = "".join(
        f"<tr><td>{escape(a.label)}</td><td>{escape(local_time(a.began_at))}</td><td>{a.first_seq}..{a.last_seq}</td>"
        f"<td>{len(a.replayed)}</td><td>{len(a.live)}</td><td>{escape(a.end)}</td></tr>" for a in t.attempts)
    failures = "".join(
        f'<p class="failure">failed in {escape(f"{f.node}#{f.index}" if f.node else "outside a node visit")} '
        f"(checkpoint seq {f.seq}): {escape(f.error_type)}: {escape(f.error)}</p>" for f in t.failures)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>spark-ckpt timeline: {escape(t.execution_id)}</title><style>{CSS}</style></head><body>"
        f"<h1>Execution {escape(t.execution_id)} of graph {escape(t.graph_id)}</h1>"
        f'<p class="summary" id="summary">{escape(summary(t))}</p>'
        f'<p class="facts">{escape(" · ".join(facts))}. Each attempt is drawn on its own stretch of the time '
        f"axis (scaled to its duration); hover a bar or checkpoint for details.</p>"
        f'<div class="legend">{legend}</div>{"".join(svg)}{failures}'
        "<table><tr><th>attempt</th><th>began</th><th>checkpoints (seq)</th><th>replayed</th><th>live</th>"
        f"<th>ended</th></tr>{rows}</table></body></html>\n"
    )


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


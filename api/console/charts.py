"""Small server-rendered SVG pictures: each queue's last hour, each task's durations. Every text
in them is escaped here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from ragcore.tasks.activity import QueueActivity
from ragcore.tasks.ledger import Durations

_W, _H, _PAD = 240, 64, 14
_LABEL = 110  # the queue names' column
_GAP = 12
_COLUMNS = 3  # histograms per row


def _document(width: float, height: float, title: str, body: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" font-family="sans-serif" role="img">'
        f"<title>{escape(title)}</title><style>rect.done {{ fill: #8fb3e8; }} "
        "polyline.waiting { stroke: #b54708; stroke-width: 2; fill: none; } "
        "text { font-size: 9px; fill: #556; } text.name { font-size: 12px; fill: #1d2330; }"
        f"</style>{body}</svg>"
    )


def _bars(counts: Sequence[int], top: int, what: Sequence[str]) -> str:
    width = _W / len(counts)
    return "".join(
        f'<rect class="done" x="{i * width + 1:.1f}" y="{_H - n / top * _H:.1f}" '
        f'width="{width - 2:.1f}" height="{n / top * _H:.1f}"><title>{escape(label)}</title></rect>'
        for i, (n, label) in enumerate(zip(counts, what, strict=True))
    )


def _queue_chart(activity: QueueActivity | None, depth_now: int) -> str:
    """Bars: tasks finished per step (throughput); line: tasks waiting at each step's end."""
    if activity is None:
        return f'<text x="2" y="{_H / 2}">no task sent in the last hour</text>'
    # the last point is now: the broker's depth, which also counts tasks sent before the window
    waiting = [*activity.waiting[:-1], max(activity.waiting[-1], depth_now)]
    finished = activity.finished
    top = max(1, *waiting, *finished)
    width = _W / len(finished)
    points = " ".join(
        f"{(i + 0.5) * width:.1f},{_H - n / top * _H:.1f}" for i, n in enumerate(waiting)
    )
    return (
        _bars(finished, top, [f"{n} finished" for n in finished])
        + f'<polyline class="waiting" points="{points}"><title>waiting</title></polyline>'
        + f'<text x="2" y="{_H + _PAD - 3}">max {top} · {sum(finished)} finished · '
        f"waiting now {waiting[-1]}</text>"
    )


def queues_picture(activity: Mapping[str, QueueActivity], depths: Mapping[str, int]) -> str:
    """One row per queue: bars of tasks finished per 5 minutes, a line of tasks waiting."""
    row = _H + _PAD + _GAP
    body = "".join(
        f'<text class="name" x="0" y="{i * row + _H / 2}">{escape(name)}</text>'
        f'<g transform="translate({_LABEL},{i * row})">'
        f"{_queue_chart(activity.get(name), depth)}</g>"
        for i, (name, depth) in enumerate(depths.items())
    )
    return _document(
        _LABEL + _W,
        len(depths) * row,
        "each queue's last hour: bars finished per 5 minutes, line waiting",
        body,
    )


def _histogram(durations: Durations) -> str:
    cumulative = [n for _, n in durations.buckets]
    counts = [b - a for a, b in zip([0, *cumulative], cumulative, strict=False)]
    counts.append(durations.count - (cumulative[-1] if cumulative else 0))  # longer than all
    labels = [_seconds(bound) for bound, _ in durations.buckets] + ["more"]
    width = _W / len(counts)
    # every other bucket labelled: eleven labels do not fit the width
    ticks = "".join(
        f'<text x="{(i + 0.5) * width:.1f}" y="{_H + _PAD - 3}" text-anchor="middle">'
        f"{escape(label)}</text>"
        for i, label in enumerate(labels)
        if i % 2 == 0
    )
    what = [f"{n} took up to {label}" for n, label in zip(counts, labels, strict=True)]
    return _bars(counts, max(1, *counts), what) + ticks


def durations_picture(durations: Sequence[Durations], window_seconds: float) -> str:
    """One histogram per task name: how many runs ended within each of /metrics' buckets, over
    /metrics' window (`window_seconds`)."""
    window = "hour" if window_seconds == 3600 else _seconds(window_seconds)
    cell_w, cell_h = _W + 2 * _GAP, _H + 2 * _PAD + _GAP
    cells = []
    for i, d in enumerate(durations):
        x, y = (i % _COLUMNS) * cell_w, (i // _COLUMNS) * cell_h
        mean = d.total_seconds / d.count if d.count else 0.0
        cells.append(
            f'<text class="name" x="{x}" y="{y + 11}">{escape(d.name)}</text>'
            f'<text x="{x}" y="{y + 22}">{d.count} runs, mean {mean:.2f}s</text>'
            f'<g transform="translate({x},{y + 2 * _PAD})">{_histogram(d)}</g>'
        )
    if not cells:
        cells.append(
            f'<text class="name" x="0" y="{_PAD}">No task finished in the last {window}.</text>'
        )
    rows = max(1, -(-len(durations) // _COLUMNS))
    return _document(
        _COLUMNS * cell_w,
        rows * cell_h,
        f"task durations per name (tasks sent in the last {window})",
        "".join(cells),
    )


def _seconds(bound: float) -> str:
    return f"{bound / 60:g}m" if bound >= 60 else f"{bound:g}s"

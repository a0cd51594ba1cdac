"""Small server-rendered SVG charts: a queue's last hour, a task's durations (SVG markup whose
every text is escaped here; templates mark it `safe`)."""

from __future__ import annotations

from html import escape

from ragcore.tasks.activity import QueueActivity
from ragcore.tasks.ledger import Durations

_W, _H, _PAD = 240, 64, 14


def _frame(title: str, body: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {_W} {_H + _PAD}" width="{_W}" height="{_H + _PAD}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>{body}</svg>'
    )


def queue_chart(activity: QueueActivity | None, depth_now: int) -> str:
    """Bars: tasks finished per step (throughput); line: tasks waiting at each step's end."""
    if activity is None:
        return _frame("no tasks sent in the last hour", _caption("no tasks in the last hour"))
    waiting = [*activity.waiting[:-1], max(activity.waiting[-1], depth_now)]
    finished = activity.finished
    steps = len(finished)
    top = max(1, *waiting, *finished)
    width = _W / steps
    bars = "".join(
        f'<rect class="done" x="{i * width + 1:.1f}" y="{_H - n / top * _H:.1f}" '
        f'width="{width - 2:.1f}" height="{n / top * _H:.1f}"><title>{n} finished</title></rect>'
        for i, n in enumerate(finished)
    )
    points = " ".join(
        f"{(i + 0.5) * width:.1f},{_H - n / top * _H:.1f}" for i, n in enumerate(waiting)
    )
    line = f'<polyline class="waiting" points="{points}" fill="none"/>'
    title = (
        f"last hour: {sum(finished)} finished; waiting now {waiting[-1]}, at most {max(waiting)}"
    )
    return _frame(title, bars + line + _caption(f"max {top} · 5-minute steps"))


def duration_histogram(durations: Durations) -> str:
    """How many runs ended within each duration bucket (the /metrics buckets, not cumulative)."""
    cumulative = [n for _, n in durations.buckets]
    counts = [b - a for a, b in zip([0, *cumulative], cumulative, strict=False)]
    counts.append(durations.count - (cumulative[-1] if cumulative else 0))  # longer than all
    labels = [_seconds(bound) for bound, _ in durations.buckets] + ["more"]
    # every other bucket labelled: ten labels do not fit the width
    top = max(1, *counts)
    width = _W / len(counts)
    bars = "".join(
        f'<rect class="done" x="{i * width + 1:.1f}" y="{_H - n / top * _H:.1f}" '
        f'width="{width - 2:.1f}" height="{n / top * _H:.1f}">'
        f"<title>{n} took ≤ {escape(label)}</title></rect>"
        for i, (n, label) in enumerate(zip(counts, labels, strict=True))
    )
    ticks = "".join(
        f'<text x="{(i + 0.5) * width:.1f}" y="{_H + _PAD - 3}" text-anchor="middle">'
        f"{escape(label)}</text>"
        for i, label in enumerate(labels)
        if i % 2 == 0
    )
    mean = durations.total_seconds / durations.count if durations.count else 0.0
    title = f"{durations.name}: {durations.count} runs, mean {mean:.2f}s"
    return _frame(title, bars + ticks)


def _seconds(bound: float) -> str:
    if bound < 1:
        return f"{bound:g}s"
    return f"{bound / 60:g}m" if bound >= 60 else f"{bound:g}s"


def _caption(text: str) -> str:
    return f'<text x="2" y="{_H + _PAD - 3}">{escape(text)}</text>'

"""Activity over time: requests and generation speed per model, in time buckets, with cold starts
(requests that had to wait for their model to load) marked."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from nicegui import ui

# Field names under which the activity API may give a request's model load wait, in milliseconds.
LOAD_FIELDS = ("load_ms", "cold_start_ms", "load_time_ms")


def load_ms(row: dict[str, Any]) -> float | None:
    for name in LOAD_FIELDS:
        value = row.get(name)
        if value:
            return float(value)
    return None


@dataclass
class Series:
    buckets: list[float] = field(default_factory=list)  # bucket start times, ascending
    requests: dict[str, list[int]] = field(default_factory=dict)  # model → count per bucket
    speed: dict[str, list[float | None]] = field(default_factory=dict)  # model → mean tokens/s
    cold: list[tuple[float, str, float]] = field(default_factory=list)  # (bucket, model, load ms)


def bucket_size(span_s: float) -> int:
    """A bucket width that gives a readable number of points for the time the rows cover."""
    for width in (10, 60, 300, 900, 3600, 4 * 3600, 86400):
        if span_s / width <= 60:
            return width
    return 86400


def series(rows: list[dict[str, Any]], width: int | None = None) -> Series:
    if not rows:
        return Series()
    times = [float(r["ts"]) for r in rows]
    width = width or bucket_size(max(times) - min(times))
    start = min(times) // width * width
    count = int((max(times) - start) // width) + 1
    buckets = [start + i * width for i in range(count)]
    reqs: dict[str, list[int]] = defaultdict(lambda: [0] * count)
    speeds: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in range(count)])
    out = Series(buckets=buckets)
    for r in rows:
        i = int((float(r["ts"]) - start) // width)
        model = r.get("model") or "?"
        reqs[model][i] += 1
        if r.get("tokens_per_s"):
            speeds[model][i].append(float(r["tokens_per_s"]))
        wait = load_ms(r)
        if wait:
            out.cold.append((buckets[i], model, wait))
    out.requests = dict(sorted(reqs.items()))
    out.speed = {m: [sum(v) / len(v) if v else None for v in speeds[m]] for m in sorted(reqs) if m in speeds}
    return out


def axis_label(ts: float, width: float) -> str:
    """Seconds show when buckets are shorter than a minute, the date when they are a day long."""
    pattern = "%H:%M:%S" if width < 60 else "%m-%d" if width >= 86400 else "%H:%M"
    return time.strftime(pattern, time.localtime(ts))


# ECharts draws its labels in mid greys meant for a light page; in dark mode they are lightened.
CHART_CSS = """
body.body--dark .lm-chart svg text { fill: #d1d5db !important; }
body.body--dark .lm-chart svg path[stroke="#E0E6F1"] { stroke: #374151 !important; }
"""


class ActivityCharts:
    def __init__(self) -> None:
        ui.add_css(CHART_CSS)
        with ui.row().classes("w-full gap-3"):
            with ui.card().props("flat bordered").classes("grow basis-80 min-w-0 q-pa-sm"):
                ui.label("Requests over time").classes("text-subtitle2")
                self.requests = self._chart("Requests")
            with ui.card().props("flat bordered").classes("grow basis-80 min-w-0 q-pa-sm"):
                ui.label("Generation speed (tokens/s), cold starts marked").classes("text-subtitle2")
                self.speed = self._chart("Tokens/s")

    @staticmethod
    def _chart(name: str) -> ui.echart:
        chart = ui.echart(
            {
                "aria": {"enabled": True},
                "tooltip": {"trigger": "axis"},
                "legend": {"type": "scroll", "bottom": 0},
                "grid": {"left": 40, "right": 12, "top": 12, "bottom": 48},
                "xAxis": {"type": "category", "data": []},
                "yAxis": {"type": "value", "name": name, "minInterval": 1 if name == "Requests" else 0},
                "series": [],
            },
            # SVG: its text takes the page's colours (see the dark-mode rule below), canvas text cannot.
            renderer="svg",
        ).classes("w-full h-56 lm-chart")
        chart.props["aria-label"] = f"{name} per model over time"
        return chart

    def set(self, s: Series) -> None:
        width = s.buckets[1] - s.buckets[0] if len(s.buckets) > 1 else 60
        labels = [axis_label(b, width) for b in s.buckets]
        self.requests.options["xAxis"]["data"] = labels
        self.requests.options["series"] = [
            {"name": m, "type": "bar", "stack": "all", "data": v} for m, v in s.requests.items()
        ]
        self.speed.options["xAxis"]["data"] = labels
        index = {b: i for i, b in enumerate(s.buckets)}
        speed = []
        for m, values in s.speed.items():
            marks = [
                {
                    "name": "cold start",
                    "coord": [index[b], values[index[b]] or 0],
                    "value": f"{ms / 1000:.1f}s",
                }
                for b, model, ms in s.cold
                if model == m
            ]
            speed.append(
                {
                    "name": m,
                    "type": "line",
                    "connectNulls": True,
                    "data": values,
                    "markPoint": {"symbol": "pin", "symbolSize": 36, "data": marks},
                }
            )
        self.speed.options["series"] = speed
        self.requests.update()
        self.speed.update()

"""Small live meters: GPU gauges and labelled usage bars, updated in place from plain numbers."""

from __future__ import annotations

from dataclasses import dataclass

from nicegui import ui

from components import fmt


@dataclass
class GpuReading:
    name: str
    mem_used: int | None = None
    mem_total: int | None = None
    util_percent: float | None = None
    temp_c: float | None = None


@dataclass
class SystemReading:
    cpu_percent: float | None = None
    ram_used: int | None = None
    ram_total: int | None = None
    gpus: list[GpuReading] | None = None
    note: str | None = None  # why some numbers are missing, shown instead of them


def _color(fraction: float) -> str:
    # Traffic-light colours make a nearly full GPU stand out at a glance.
    if fraction >= 0.9:
        return "negative"
    if fraction >= 0.7:
        return "warning"
    return "positive"


class UsageBar:
    """A labelled thin bar (CPU, RAM, per-instance resources)."""

    def __init__(self, label: str, width: str = "w-28") -> None:
        with ui.column().classes(f"gap-0 {width}") as self.box:
            with ui.row().classes("w-full justify-between no-wrap gap-2 text-xs leading-tight"):
                ui.label(label).classes("opacity-80")
                self.text = ui.label(fmt.DASH).classes("font-mono whitespace-nowrap")
            self.bar = ui.linear_progress(value=0, show_value=False, size="6px").props("rounded")
            self.label = label
            self.bar.props["aria-label"] = label

    def set(self, fraction: float | None, text: str) -> None:
        self.text.text = text
        self.bar.props["aria-valuetext"] = f"{self.label}: {text}"
        value = 0.0 if fraction is None else max(0.0, min(1.0, fraction))
        self.bar.value = value
        self.bar.props["color"] = _color(value)


class GpuGauge:
    """One GPU: a ring of VRAM use with utilization and temperature beside it."""

    def __init__(self, reading: GpuReading) -> None:
        with ui.row().classes("items-center gap-1 no-wrap") as self.box:
            self.ring = ui.circular_progress(value=0, min=0, max=1, show_value=False, size="34px")
            self.ring.props("thickness=0.3 track-color=grey-5")
            self.ring.props["aria-label"] = f"{reading.name} memory"
            with ui.column().classes("gap-0 text-xs leading-tight"):
                self.title = ui.label(reading.name).classes("font-medium max-w-40 ellipsis")
                self.mem = ui.label(fmt.DASH).classes("font-mono")
                self.extra = ui.label("").classes("font-mono opacity-80")
            self.tip = ui.tooltip("")
        self.set(reading)

    def set(self, r: GpuReading) -> None:
        frac = fmt.percent(r.mem_used or 0, r.mem_total or 0)
        self.ring.value = frac
        self.ring.props["color"] = _color(frac)
        self.title.text = r.name
        self.mem.text = f"{fmt.size(r.mem_used)} / {fmt.size(r.mem_total)}"
        util = f"{r.util_percent:.0f}%" if r.util_percent is not None else fmt.DASH
        temp = f"{r.temp_c:.0f}°C" if r.temp_c is not None else fmt.DASH
        self.extra.text = f"util {util} · {temp}"
        self.tip.text = f"{r.name}: VRAM {self.mem.text}, utilization {util}, temperature {temp}"


class SystemMeters:
    """The header's meters; ``set`` takes a reading (or None when no telemetry is available)."""

    def __init__(self) -> None:
        with ui.row().classes("items-center gap-4 no-wrap") as self.box:
            self.gpu_row = ui.row().classes("items-center gap-3 no-wrap")
            self.cpu = UsageBar("CPU")
            self.ram = UsageBar("RAM", "w-40")
            self.note = ui.label("").classes("text-xs opacity-80 whitespace-nowrap")
            with self.note:
                self.note_tip = ui.tooltip("")
        self.gauges: list[GpuGauge] = []

    def set(self, reading: SystemReading | None) -> None:
        if reading is None:
            self.cpu.box.visible = self.ram.box.visible = False
            self.note.text = "system monitoring unavailable"
            self.note_tip.text = "The telemetry service is not part of this build."
            return
        self.cpu.box.visible = self.ram.box.visible = True
        cpu = reading.cpu_percent
        self.cpu.set(None if cpu is None else cpu / 100, fmt.DASH if cpu is None else f"{cpu:.0f}%")
        self.ram.set(
            fmt.percent(reading.ram_used or 0, reading.ram_total or 0),
            f"{fmt.size(reading.ram_used)} / {fmt.size(reading.ram_total)}",
        )
        gpus = reading.gpus or []
        if len(gpus) != len(self.gauges):
            self.gpu_row.clear()
            with self.gpu_row:
                self.gauges = [GpuGauge(g) for g in gpus]
        for gauge, g in zip(self.gauges, gpus, strict=True):
            gauge.set(g)
        # The reason can be long (every GPU source tried); its first clause fits the header.
        note = reading.note or ""
        self.note.text = note.split(":")[0] if note else ""
        self.note_tip.text = note
        self.note.visible = bool(note)

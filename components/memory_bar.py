"""Memory per device: a bar for each (host RAM, each GPU) against its limit, split into the share of
each resident model. Render only: it takes plain dicts as ``GET /api/placement`` returns them."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from components import fmt

# Resident models take these colours in turn, so neighbouring shares stay apart.
_SHADES = ("bg-primary", "bg-secondary", "bg-accent", "bg-positive", "bg-info", "bg-warning")


def _label(device: dict[str, Any], used: int, limit: int) -> str:
    return (
        f"{device.get('name') or device['id']}: {fmt.size(used)} of {fmt.size(limit)} limit used by models, "
        f"{fmt.size(device.get('used_by_others', 0))} by others, {fmt.size(device.get('free', 0))} free"
    )


class MemoryBars:
    def __init__(self) -> None:
        self.box = ui.column().classes("w-full gap-1")
        self._last: list[dict[str, Any]] | None = None

    def update(self, devices: list[dict[str, Any]]) -> None:
        if devices == self._last:
            return  # nothing moved: keep the elements (and any open tooltip) as they are
        self._last = devices
        self.box.clear()
        with self.box:
            for device in devices:
                limit = int(device.get("limit") or device.get("total") or 0)
                used = int(device.get("used_by_models", 0))
                label = _label(device, used, limit)
                ui.label(label).classes("text-xs opacity-75")
                bar = ui.linear_progress(value=fmt.percent(used, limit), show_value=False).props("size=6px")
                # Set as a prop, not parsed from a props string: the label holds spaces and commas.
                bar.props["aria-label"] = label
                with ui.element("div").classes("w-full flex h-2 rounded overflow-hidden"):
                    for i, model in enumerate(device.get("models", [])):
                        share = 100 * int(model["bytes"]) / limit if limit else 0
                        name = f"{model['model']}: {fmt.size(model['bytes'])}"
                        part = ui.element("div").classes(_SHADES[i % len(_SHADES)])
                        part.style(f"width: {min(share, 100):.2f}%").tooltip(name)
                        part.props["aria-label"], part.props["role"] = name, "img"

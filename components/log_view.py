"""A live log tail with auto-scroll, pause and search.

Lines arrive one by one (``push``); while paused they are only remembered, and a search shows the
matching remembered lines. Only the newest ``max_lines`` are kept on the page.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from nicegui import ui


class LogView:
    def __init__(self, lines: Iterable[str] = (), *, max_lines: int = 200, height: str = "14rem") -> None:
        self.max_lines = max_lines
        self.buffer: deque[str] = deque(lines, maxlen=max_lines * 5)
        self.paused = False
        self.follow = True
        self.query = ""
        with ui.column().classes("w-full gap-1"):
            with ui.row().classes("w-full items-center no-wrap gap-2"):
                ui.input(placeholder="Search log", on_change=self._search).props(
                    'dense outlined clearable debounce=200 type=search aria-label="Search log"'
                ).classes("grow").mark("log-search")
                self.pause_btn = ui.button(icon="pause", on_click=self.toggle_pause).props("flat round dense")
                self.pause_btn.props["aria-label"] = "Pause the log"
                with self.pause_btn:
                    self.pause_tip = ui.tooltip("Pause")
                self.follow_box = ui.checkbox("Auto-scroll", value=True, on_change=self._follow).props(
                    "dense"
                )
            self.area = (
                ui.scroll_area().classes("w-full lm-log lm-soft rounded-borders").style(f"height: {height}")
            )
            with self.area:
                # Focusable, so the keyboard can scroll the log (arrow keys, Page Up/Down).
                self.body = ui.column().classes("w-full gap-0").props('tabindex=0 role=log aria-label="Log"')
        self.rebuild()

    def _matches(self, line: str) -> bool:
        return not self.query or self.query in line.casefold()

    def _add(self, line: str) -> None:
        with self.body:
            ui.label(line).classes("lm-mono lm-log-line")
        overflow = len(self.body.default_slot.children) - self.max_lines
        for child in list(self.body.default_slot.children)[: max(overflow, 0)]:
            child.delete()

    def rebuild(self) -> None:
        self.body.clear()
        shown = [line for line in self.buffer if self._matches(line)][-self.max_lines :]
        if self.query and not shown:
            with self.body:
                ui.label("no matching lines").classes("text-xs opacity-60")
        for line in shown:
            self._add(line)
        self._scroll()

    def _scroll(self) -> None:
        if self.follow and not self.paused:
            self.area.scroll_to(percent=1.0)

    def push(self, line: str) -> None:
        self.buffer.append(line)
        if self.paused or not self._matches(line):
            return
        self._add(line)
        self._scroll()

    def replace(self, lines: Iterable[str]) -> None:
        self.buffer.clear()
        self.buffer.extend(lines)
        self.rebuild()

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        self.pause_btn.props["icon"] = "play_arrow" if self.paused else "pause"
        self.pause_tip.text = "Resume" if self.paused else "Pause"
        self.pause_btn.props["aria-label"] = "Resume the log" if self.paused else "Pause the log"
        if not self.paused:
            self.rebuild()

    def _follow(self, e: Any) -> None:
        self.follow = bool(e.value)
        self._scroll()

    def _search(self, e: Any) -> None:
        self.query = (e.value or "").strip().casefold()
        self.rebuild()

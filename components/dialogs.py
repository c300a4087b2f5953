"""Confirmation dialogs that remove themselves once closed, so a page does not collect hidden ones."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable

from nicegui import ui


def confirm(
    title: str,
    lines: Iterable[str],
    action: str,
    on_confirm: Callable[[], Awaitable[None] | None],
    *,
    color: str = "negative",
    mono: bool = False,
) -> ui.dialog:
    with ui.dialog() as dialog, ui.card().classes("min-w-80"):
        ui.label(title).classes("text-h6")
        for line in lines:
            ui.label(line).classes("lm-mono text-xs" if mono else "text-sm")
        with ui.row().classes("w-full justify-end"):
            ui.button("Cancel", on_click=dialog.close).props("flat")

            async def go() -> None:
                dialog.close()
                result = on_confirm()
                if inspect.isawaitable(result):
                    await result

            ui.button(action, color=color, on_click=go).mark(f"confirm-{action.lower()}")
    dialog.on("hide", dialog.delete)  # after the closing animation
    dialog.open()
    return dialog

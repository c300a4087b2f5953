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
    ("/nodes", "Nodes", "hub"),
    ("/keys", "API keys", "key"),
    ("/settings", "Settings", "settings"),
    ("/system", "System", "build"),
]


@dataclass
class FrameInfo:
    binary: str  # e.g. "llama-server b4589 (wheel)", or why there is none
    binary_tip: str
    binary_ok: bool
    username: str | None
    dark: bool | None  # None follows the browser


def apply_theme() -> None:
    # Shades chosen for WCAG AA (4.5:1) as text on white and behind white text; dark mode lightens
    # text-coloured controls, which would otherwise sit dark-on-dark.
    ui.colors(
        primary="#4f46e5",
        secondary="#0369a1",
        accent="#7e22ce",
        positive="#15803d",
        negative="#b91c1c",
        warning="#b45309",
        info="#0369a1",
    )
    ui.add_body_html(_FOCUSABLE_SCROLLERS)
    # Quasar's colour classes are !important inside a cascade layer; an !important rule only beats
    # them from an earlier layer ("theme" is NiceGUI's first).
    ui.add_css("@layer theme {\n" + _OVERRIDES + "}\n")
    ui.add_css(
        """
        .nicegui-content { padding: 12px 16px; }
        @media (max-width: 599px) { .nicegui-content { padding: 8px; } }
        .lm-sr-only { position: absolute !important; width: 1px; height: 1px; padding: 0; margin: -1px;
            overflow: hidden; clip: rect(0, 0, 0, 0); white-space: nowrap; border: 0; }
        .lm-mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
        .lm-log .q-scrollarea__content { padding: 4px 8px; }
        .lm-wrap pre, .lm-wrap code { white-space: pre-wrap !important; word-break: break-all; }
        .lm-log-line { white-space: pre-wrap; word-break: break-all; font-size: 11.5px; line-height: 1.35; }
        body.body--dark .lm-soft { background: #1f2430; }
        body.body--light .lm-soft { background: #f4f5fb; }
        """
    )


# Tables scroll sideways inside themselves on narrow screens; a keyboard user reaches such a region
# only when it can take focus. Quasar renders it without a tabindex, so one is added as tables appear.
_FOCUSABLE_SCROLLERS = """
<script>
(() => {
  const mark = () => document.querySelectorAll('.q-table__middle.scroll:not([tabindex])').forEach(el => {
    el.setAttribute('tabindex', '0');
    el.setAttribute('role', 'region');
    el.setAttribute('aria-label', 'Table');
  });
  new MutationObserver(mark).observe(document.documentElement, {childList: true, subtree: true});
  mark();
})();
</script>
"""


_OVERRIDES = """
        body.body--dark .text-primary { color: #a5b4fc !important; }
        body.body--dark .text-negative { color: #fca5a5 !important; }
        body.body--dark .text-warning { color: #fcd34d !important; }
        body.body--dark .text-positive { color: #86efac !important; }
        body.body--dark .text-secondary, body.body--dark .text-info { color: #7dd3fc !important; }
        body.body--dark .q-header .text-white, body.body--dark .q-header .q-tab { color: #fff !important; }
        body.body--dark .q-header { background: #312e81 !important; }
        .q-tab__label { font-weight: 500; }
        body.body--dark .q-badge--outline { color: #e5e7eb !important; }
        .codehilite .c, .codehilite .c1, .codehilite .cm, .codehilite .ch { color: #4b5563 !important; }
        body.body--dark .codehilite .c, body.body--dark .codehilite .c1,
        body.body--dark .codehilite .cm, body.body--dark .codehilite .ch { color: #cbd5e1 !important; }
        .q-header .q-tab { opacity: 1; }
        .q-header .q-tab:not(.q-tab--active) .q-tab__label { opacity: .92; }
"""


def _theme_toggle(
    dark: bool | None, on_dark: Callable[[bool | None], None]
) -> tuple[ui.dark_mode, Callable[[], None]]:
    mode = ui.dark_mode(dark)
    icons = {None: "brightness_auto", True: "dark_mode", False: "light_mode"}
    names = {None: "follow the browser", True: "dark", False: "light"}

    def cycle() -> None:
        nxt = {None: True, True: False, False: None}[mode.value]
        mode.value = nxt
        button.props["icon"] = icons[nxt]
        tip.text = f"Theme: {names[nxt]} (click to change)"
        button.props["aria-label"] = tip.text
        button.update()
        on_dark(nxt)

    button = ui.button(icon=icons[dark], on_click=cycle).props("flat round dense color=white").mark("theme")
    button.classes("gt-xs")  # on a phone the account menu holds the theme
    button.props["aria-label"] = f"Theme: {names[dark]} (click to change)"
    with button:
        tip = ui.tooltip(f"Theme: {names[dark]} (click to change)")
    return mode, cycle


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
    title = next((label for path, label, _ in NAV if path == active), "LlamaMan")
    with ui.header(elevated=True).classes("bg-primary text-white q-py-xs q-px-sm gap-0 column"):
        with ui.row().classes("w-full items-center no-wrap gap-2"):
            if drawer is not None:
                menu = ui.button(icon="menu").props("flat round dense color=white")
                menu.props["aria-label"] = "Model library"
                menu.tooltip("Model library")
            with ui.row().classes("items-center no-wrap gap-1 min-w-0"):
                ui.icon("pets", size="1.6rem").props('aria-hidden="true"')
                ui.label("LlamaMan").classes("text-h6 text-weight-bold no-wrap")
            ui.space()
            # Meters and the binary chip need room: tablets and phones read them on Settings.
            with ui.row().classes("gt-sm items-center no-wrap gap-2 min-w-0 overflow-hidden"):
                meters = SystemMeters()
                chip = ui.chip(info.binary, icon="memory" if info.binary_ok else "error").props(
                    "dense square "
                    + ("color=indigo-10 text-color=white" if info.binary_ok else "color=negative")
                )
                chip.classes("lm-mono text-xs max-w-72 ellipsis")
                chip.tooltip(info.binary_tip)
            mode, cycle = _theme_toggle(info.dark, on_dark)
            _account_menu(info, mode, cycle, on_logout)
        with (
            ui.tabs(value=active)
            .props('dense inline-label align=left no-caps outside-arrows mobile-arrows aria-label="Pages"')
            .classes("w-full") as tabs
        ):
            for path, label, icon in NAV:
                ui.tab(path, label=label, icon=icon)
        tabs.on_value_change(lambda e: ui.navigate.to(e.value) if e.value != active else None)
    if drawer is not None:
        # value=None: open beside the content on wide screens, closed (an overlay) on narrow ones.
        with (
            ui.left_drawer(value=None, bordered=True)
            .props("width=330 breakpoint=1023")
            .classes("q-pa-sm") as side
        ):
            drawer()
        menu.on_click(side.toggle)
    ui.page_title(f"{title} · LlamaMan")

    async def tick() -> None:
        if not ui.context.client.has_socket_connection:
            return  # a page whose browser left (and may come back): nobody sees the meters
        try:
            reading = read_system()
            meters.set(await reading if inspect.isawaitable(reading) else reading)
        except Exception as exc:  # a broken sensor must not take the page down
            meters.set(SystemReading(note=f"monitoring error: {exc}"))

    ui.timer(2.0, tick, immediate=True)
    with ui.column().classes("w-full gap-3 min-w-0") as content:
        heading = ui.label(title).classes("lm-sr-only")
        heading.tag = "h1"
        yield content


def _account_menu(
    info: FrameInfo,
    mode: ui.dark_mode,
    cycle: Callable[[], None],
    on_logout: Callable[[], object] | None,
) -> None:
    """The user menu: who is signed in, the theme (the only place for it on a phone), signing out."""
    names = {None: "follow the browser", True: "dark", False: "light"}
    button = ui.button(icon="account_circle").props("flat dense no-caps color=white")
    button.props["aria-label"] = "Account and theme"
    button.mark("account-menu")
    with button:
        if info.username:
            ui.label(info.username).classes("gt-xs q-ml-xs")
        with ui.menu():
            if info.username:
                ui.menu_item(f"Signed in as {info.username}").props("disable")

            def next_theme() -> None:
                cycle()
                theme.text = f"Theme: {names[mode.value]} (click to change)"

            with ui.menu_item(on_click=next_theme, auto_close=False).mark("menu-theme"):
                theme = ui.item_section(f"Theme: {names[mode.value]} (click to change)")
            ui.menu_item(info.binary).props("disable").classes("lt-md lm-mono text-xs")
            if on_logout is not None:
                ui.menu_item("Sign out", on_click=on_logout).mark("sign-out")

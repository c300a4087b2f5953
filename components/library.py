"""The model library sidebar: search, sort, filter, per-model facts, launch and delete."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nicegui import ui

from components import fmt
from components.a11y import named
from components.dialogs import confirm

SORTS = {"name": "Name", "size": "Size", "newest": "Newest", "params": "Parameters"}
FILTERS = {"all": "All", "chat": "Chat", "embedding": "Embedding", "vision": "Vision"}
# Dark shades: outline badges show their colour as text, which must reach 4.5:1 on white.
# What the library says about a model's instances (the worst-first pick is made by the page).
RUN_STATES = {
    "healthy": ("loaded", "green-9"),
    "starting": ("loading", "deep-orange-10"),
    "sleeping": ("sleeping", "blue-grey-8"),
}
CAP_COLORS = {"chat": "indigo-9", "embedding": "teal-9", "vision": "purple-9", "tools": "deep-orange-10"}


def capabilities(entry: Any) -> list[str]:
    """User-facing capability names: a completion model with a chat template is a chat model."""
    caps = []
    for c in entry.capabilities:
        caps.append("chat" if c == "completion" else c)
    return caps


def _sort_key(mode: str) -> Callable[[Any], Any]:
    if mode == "size":
        return lambda e: -e.size_bytes
    if mode == "newest":
        return lambda e: -e.modified_at
    if mode == "params":
        return lambda e: -(e.info.parameter_count if e.info else 0)
    return lambda e: e.name.casefold()


class ModelLibraryView:
    def __init__(
        self,
        models: list[Any],
        *,
        on_launch: Callable[[Any], Any],
        on_delete: Callable[[Any], Awaitable[None]],
        on_rescan: Callable[[], Awaitable[None]],
        selected: str | None = None,
        on_load: Callable[[Any], Awaitable[None]] | None = None,
        on_unload: Callable[[Any], Awaitable[None]] | None = None,
        states: dict[str, str] | None = None,
    ) -> None:
        self.on_load = on_load
        self.on_unload = on_unload
        self.states: dict[str, str] = states or {}
        self.models = models
        self.on_launch = on_launch
        self.on_delete = on_delete
        self.selected = selected
        self.query = ""
        self.sort = "name"
        self.filter = "all"
        # Loads in progress by model path ({"stage", "fraction"}), and the bars that show them.
        self.loading: dict[str, dict[str, Any]] = {}
        self.bars: dict[str, ui.linear_progress] = {}
        with ui.column().classes("w-full gap-2"):
            with ui.row().classes("w-full items-center no-wrap"):
                ui.label("Model library").classes("text-subtitle1 text-weight-medium")
                ui.space()
                self.count = ui.label("").classes("text-xs opacity-70")
                rescan = ui.button(icon="refresh", on_click=on_rescan).props("flat round dense")
                named(rescan, "Rescan MODELS_DIR")
            ui.input(placeholder="Search models", on_change=self._set_query).props(
                'dense outlined clearable debounce=150 type=search aria-label="Search models"'
            ).classes("w-full").mark("library-search")
            with ui.row().classes("w-full no-wrap gap-2"):
                ui.select(SORTS, value="name", label="Sort", on_change=self._set_sort).props(
                    "dense outlined options-dense"
                ).classes("w-1/2")
                ui.select(FILTERS, value="all", label="Show", on_change=self._set_filter).props(
                    "dense outlined options-dense"
                ).classes("w-1/2")
            self.list = ui.column().classes("w-full gap-1")
        self.render()

    def _set_query(self, e: Any) -> None:
        self.query = (e.value or "").strip().casefold()
        self.render()

    def _set_sort(self, e: Any) -> None:
        self.sort = e.value
        self.render()

    def _set_filter(self, e: Any) -> None:
        self.filter = e.value
        self.render()

    def set_states(self, states: dict[str, str]) -> None:
        """Instance states by model path (``healthy``, ``starting``, ``sleeping``)."""
        if states != self.states:
            self.states = dict(states)
            self.render()

    def set_models(self, models: list[Any]) -> None:
        self.models = models
        self.render()

    def visible(self) -> list[Any]:
        out = [
            m
            for m in self.models
            if (not self.query or self.query in m.name.casefold() or self.query in m.rel_path.casefold())
            and (self.filter == "all" or self.filter in capabilities(m))
        ]
        return sorted(out, key=_sort_key(self.sort))

    def render(self) -> None:
        shown = self.visible()
        self.count.text = f"{len(shown)} of {len(self.models)}"
        self.list.clear()
        self.bars.clear()
        with self.list:
            if not shown:
                ui.label(
                    "No models match."
                    if self.models
                    else "No models yet: put GGUF files in MODELS_DIR or download one."
                ).classes("text-sm opacity-70 q-pa-sm")
            for m in shown:
                self._item(m)

    def _item(self, m: Any) -> None:
        info = m.info
        card = ui.card().props("flat bordered").classes("w-full q-pa-sm gap-1 lm-soft")
        if m.rel_path == self.selected:
            card.style("border-left: 4px solid var(--q-primary)")
        with card:
            with ui.row().classes("w-full items-start no-wrap gap-1"):
                with ui.column().classes("gap-0 grow min-w-0"):
                    ui.label(m.name).classes("text-weight-medium ellipsis w-full").tooltip(m.rel_path)
                    facts = [
                        info.quantization if info and info.quantization else m.kind.upper(),
                        fmt.size(m.size_bytes),
                    ]
                    if info and info.parameter_count:
                        facts.append(f"{info.parameter_size} params")
                    ui.label(" · ".join(facts)).classes("text-xs opacity-80")
                    layers = (info.block_count if info else None) or (
                        m.hf.num_hidden_layers if m.hf else None
                    )
                    ctx = (info.context_length if info else None) or (
                        m.hf.max_position_embeddings if m.hf else None
                    )
                    ui.label(f"{layers or fmt.DASH} layers · ctx {fmt.count(ctx)}").classes(
                        "text-xs opacity-80"
                    )
                state = self.states.get(m.rel_path)
                if state in RUN_STATES and self.on_unload is not None:
                    off = ui.button(icon="eject", on_click=lambda m=m: self.on_unload(m))  # type: ignore[misc]
                    named(
                        off.props("flat round dense color=warning").mark(f"unload-{m.rel_path}"),
                        f"Unload {m.name}",
                    )
                elif m.launchable and self.on_load is not None:
                    on = ui.button(icon="play_arrow", on_click=lambda m=m: self.on_load(m))  # type: ignore[misc]
                    named(
                        on.props("flat round dense color=positive").mark(f"load-{m.rel_path}"),
                        f"Load {m.name} (its preset or defaults)",
                    )
                if m.launchable:
                    go = ui.button(icon="rocket_launch", on_click=lambda m=m: self.on_launch(m))
                    go.props("flat round dense color=primary").mark(f"launch-{m.rel_path}")
                    named(go, f"Launch {m.name} with chosen settings")
                rm = ui.button(icon="delete", on_click=lambda m=m: self._confirm_delete(m))
                rm.props("flat round dense color=negative").mark(f"delete-{m.rel_path}")
                named(rm, f"Delete {m.name}")
            with ui.row().classes("gap-1"):
                if state in RUN_STATES:
                    text, color = RUN_STATES[state]
                    ui.badge(text, color=color).mark(f"state-{m.rel_path}")
                for cap in capabilities(m):
                    ui.badge(cap, color=CAP_COLORS.get(cap, "grey-8")).props("outline")
                if m.mmproj:
                    ui.badge("mmproj", color="purple-9").props("outline").tooltip(m.mmproj)
                if m.parts:
                    ui.badge(f"{len(m.parts)} parts", color="grey-8").props("outline")
            if m.error:
                ui.label(m.error).classes("text-xs text-negative")
            bar = ui.linear_progress(value=0, show_value=False, size="4px").props("color=orange")
            self.bars[m.rel_path] = bar.mark(f"load-progress-{m.rel_path}")
            self._show(m.rel_path, m.name)

    def set_progress(self, rel_path: str, progress: dict[str, Any] | None) -> None:
        """How far a model's load has got; None once it is no longer loading."""
        if progress is None or progress.get("stage") == "loaded":
            self.loading.pop(rel_path, None)
        else:
            self.loading[rel_path] = progress
        name = next((m.name for m in self.models if m.rel_path == rel_path), rel_path)
        self._show(rel_path, name)

    def _show(self, rel_path: str, name: str) -> None:
        bar, progress = self.bars.get(rel_path), self.loading.get(rel_path)
        if bar is None:
            return
        bar.visible = progress is not None
        if progress is not None:
            bar.value = float(progress.get("fraction") or 0)
            # Set as a value, never parsed from a string: a model name must not reach the markup.
            bar.props["aria-label"] = f"Loading {name}: {progress.get('stage')}, {bar.value:.0%}"
            bar.update()

    def _confirm_delete(self, m: Any) -> None:
        files = m.parts or [m.rel_path]
        if m.mmproj:
            files = [*files, f"{m.mmproj} (when no other model uses it)"]
        confirm(
            f"Delete {m.name}?",
            ["These files are removed from disk:", *files],
            "Delete",
            lambda: self.on_delete(m),
        )

"""The model library drawer, wired to the library service (shared by the instances and launch pages)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from nicegui import ui

from components.library import ModelLibraryView
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.supervisor import InstanceError
from llamaman.library.catalog import LibraryError
from llamaman.services import Services
from pages.shell import fail, subscribe


def launch_url(rel_path: str) -> str:
    return f"/launch?model={quote(rel_path, safe='')}"


LIVE = ("starting", "healthy", "sleeping")
# When one model has several instances, the library shows the most useful state.
_RANK = {"healthy": 0, "starting": 1, "sleeping": 2}


def model_states(services: Services) -> dict[str, str]:
    """The state to show per model path: loaded beats loading beats sleeping."""
    states: dict[str, str] = {}
    for m in services.supervisor.list():
        state = m.state.value
        if state in _RANK:
            path = m.record.model_path
            if path not in states or _RANK[state] < _RANK[states[path]]:
                states[path] = state
    return states


def running_instances(services: Services, rel_path: str) -> list[Any]:
    return [
        m for m in services.supervisor.list() if m.record.model_path == rel_path and m.state.value in LIVE
    ]


async def load_model(services: Services, rel_path: str) -> None:
    """Launch ``rel_path`` with its saved preset (or the defaults), as one click in the library does."""
    preset = await services.presets.get(rel_path) or {}
    try:
        # The placement policy is for the proxy's on-demand loads; a launch from here is explicit.
        values = {k: v for k, v in preset.items() if k != "placement"}
        ls = LaunchSettings(**{**values, "model_path": rel_path})
        m = await services.supervisor.launch(ls)
    except InstanceError as exc:
        fail(f"Could not load {rel_path}: {exc.message}")
        return
    except Exception as exc:
        fail(f"Could not load {rel_path}: {exc}")
        return
    ui.notify(f"Loading {m.record.model_name} on port {m.record.port}", type="info")


async def unload_model(services: Services, rel_path: str) -> None:
    """Stop every running instance of ``rel_path``."""
    for m in running_instances(services, rel_path):
        try:
            await services.supervisor.stop(m.id)
        except InstanceError as exc:
            fail(f"Could not stop {m.record.model_name}: {exc.message}")


def library_drawer(
    services: Services, *, selected: str | None = None, on_launch: Callable[[Any], Any] | None = None
) -> Callable[[], None]:
    """A builder for the frame's drawer; ``on_launch`` defaults to opening the launch page."""

    def build() -> None:
        view: ModelLibraryView | None = None

        async def rescan() -> None:
            try:
                models = await services.library.ascan()
            except Exception as exc:
                fail(f"Rescan failed: {exc}")
                return
            if view is not None:
                view.set_models(models)

        async def delete(entry: Any) -> None:
            try:
                removed = await services.delete_model(entry.rel_path)
            except InstanceError as exc:
                fail(f"Could not delete {entry.name}: {exc.message}")
                return
            except (LibraryError, OSError) as exc:
                fail(f"Could not delete {entry.name}: {exc}")
                return
            ui.notify(f"Deleted {', '.join(removed)}", type="positive")
            await rescan()

        view = ModelLibraryView(
            services.library.models,
            on_launch=on_launch or (lambda e: ui.navigate.to(launch_url(e.rel_path))),
            on_delete=delete,
            on_rescan=rescan,
            selected=selected,
            on_load=lambda e: load_model(services, e.rel_path),
            on_unload=lambda e: unload_model(services, e.rel_path),
            states=model_states(services),
        )

        def changed(_: Any) -> None:
            if view is not None:
                view.set_models(services.library.models)

        def instances_changed(ev: Any) -> None:
            if view is not None and getattr(ev, "topic", "") != "instance.log":
                view.set_states(model_states(services))

        subscribe(services, "library.", changed, resync=lambda: changed(None))
        subscribe(services, "instance.", instances_changed, resync=lambda: instances_changed(None))

        def progressed(ev: Any) -> None:
            # A loading model shows how far it got (the event names the instance, not the model).
            m = services.supervisor.instances.get(ev.data.get("id", ""))
            if view is not None and m is not None:
                view.set_progress(m.record.model_path, ev.data)

        subscribe(services, "instance.progress", progressed, resync=lambda: None)

    return build

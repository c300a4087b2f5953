"""The model library drawer, wired to the library service (shared by the instances and launch pages)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from nicegui import ui

from components.library import ModelLibraryView
from llamaman.instances.supervisor import InstanceError
from llamaman.library.catalog import LibraryError
from llamaman.services import Services
from pages.shell import fail, subscribe


def launch_url(rel_path: str) -> str:
    return f"/launch?model={quote(rel_path, safe='')}"


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
        )

        def changed(_: Any) -> None:
            if view is not None:
                view.set_models(services.library.models)

        subscribe(services, "library.", changed, resync=lambda: changed(None))

        def progressed(ev: Any) -> None:
            # A loading model shows how far it got (the event names the instance, not the model).
            m = services.supervisor.instances.get(ev.data.get("id", ""))
            if view is not None and m is not None:
                view.set_progress(m.record.model_path, ev.data)

        subscribe(services, "instance.progress", progressed, resync=lambda: None)

    return build

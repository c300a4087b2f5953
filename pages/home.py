"""The instances overview."""

from __future__ import annotations

from nicegui import ui

from llamaman.services import Services


def register(services: Services) -> None:
    @ui.page("/")
    def home() -> None:
        ui.label("LlamaMan").classes("text-h4")
        columns = [
            {"name": "model_name", "label": "Model", "field": "model_name"},
            {"name": "port", "label": "Port", "field": "port"},
            {"name": "status", "label": "Status", "field": "status"},
        ]
        table = ui.table(columns=columns, rows=[], row_key="id")

        def refresh() -> None:
            table.rows = [m.view() for m in services.supervisor.list()]
            table.update()

        refresh()
        ui.timer(1.0, refresh)

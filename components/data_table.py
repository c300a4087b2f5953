"""Table helpers: column lists from (field, label) pairs and a compact default look."""

from __future__ import annotations

from typing import Any

from nicegui import ui


def columns(spec: list[tuple[str, str]], *, align: str = "left") -> list[dict[str, Any]]:
    return [{"name": f, "label": label, "field": f, "align": align, "sortable": True} for f, label in spec]


def table(
    spec: list[tuple[str, str]], rows: list[dict[str, Any]], *, row_key: str = "id", **kw: Any
) -> ui.table:
    t = ui.table(columns=columns(spec), rows=rows, row_key=row_key, **kw)
    t.props("flat bordered dense wrap-cells").classes("w-full")
    return t

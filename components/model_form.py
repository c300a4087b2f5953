"""A form generated from a pydantic model: one input per field, its default shown as a hint, its
description as a tooltip, and pydantic's own validation errors shown on the field they concern.

Generating it keeps the UI in step with the REST API: a field added to the model appears here.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any

from nicegui import ui
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), len(args) < len(typing.get_args(annotation))
    return annotation, False


def _is_str_list(typ: Any) -> bool:
    return typing.get_origin(typ) is list and typing.get_args(typ) in ((str,), ())


def _as_text(typ: Any, v: Any) -> str:
    """How a value reads in a text field: a list of strings comma-separated."""
    if v is None:
        return ""
    if _is_str_list(typ) and isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return str(v)


def _default(field: FieldInfo) -> Any:
    if field.default is not PydanticUndefined:
        return field.default
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None


def humanize(name: str) -> str:
    return name.replace("_", " ").capitalize()


def error_text(err: dict[str, Any]) -> str:
    return str(err.get("msg", "invalid value")).removeprefix("Value error, ")


class ModelForm:
    """Inputs for ``model``'s fields. ``values()`` returns what pydantic should validate."""

    def __init__(
        self,
        model: type[BaseModel],
        *,
        skip: frozenset[str] | set[str] = frozenset(),
        labels: dict[str, str] | None = None,
        suffixes: dict[str, str] | None = None,
        passwords: frozenset[str] = frozenset(),
        on_change: Callable[[], None] | None = None,
        columns: int = 3,
        hints: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self.hints = hints or {}
        self.labels = labels or {}
        self.suffixes = suffixes or {}
        self.passwords = passwords
        self.on_change = on_change
        self.inputs: dict[str, Any] = {}
        self.kinds: dict[str, tuple[Any, bool]] = {}
        self.nested: dict[str, ModelForm] = {}
        self.defaults: dict[str, Any] = {}
        fields = {n: f for n, f in model.model_fields.items() if n not in skip}
        plain = {n: f for n, f in fields.items() if not self._is_model(f)}
        switches = {n: f for n, f in plain.items() if _base_type(f.annotation)[0] is bool}
        with ui.column().classes("w-full gap-2"):
            # One column on phones, two on tablets, ``columns`` on wide screens.
            wide = {1: "", 2: "sm:grid-cols-2", 3: "sm:grid-cols-2 lg:grid-cols-3"}.get(
                columns, "sm:grid-cols-2"
            )
            with ui.element("div").classes(f"w-full grid grid-cols-1 {wide} gap-x-4 gap-y-3"):
                for name, field in plain.items():
                    if name not in switches:
                        self._add(name, field)
            with ui.row().classes("w-full gap-x-6 gap-y-0"):
                for name, field in switches.items():
                    self._add(name, field)
            for name, field in fields.items():
                if self._is_model(field):
                    sub_model = _base_type(field.annotation)[0]
                    title = self.labels.get(name, humanize(name))
                    with ui.expansion(title, icon="tune").classes("w-full").props("dense"):
                        if field.description or sub_model.__doc__:
                            ui.label(field.description or sub_model.__doc__ or "").classes(
                                "text-xs opacity-70"
                            )
                        self.nested[name] = ModelForm(
                            sub_model, on_change=on_change, columns=columns, hints=self.hints
                        )

    @staticmethod
    def _is_model(field: FieldInfo) -> bool:
        t = _base_type(field.annotation)[0]
        return isinstance(t, type) and issubclass(t, BaseModel)

    def _add(self, name: str, field: FieldInfo) -> None:
        typ, optional = _base_type(field.annotation)
        default = _default(field)
        self.defaults[name] = default
        self.kinds[name] = (typ, optional)
        label = self.labels.get(name, humanize(name))
        shown = (
            "blank"
            if default is None
            else ("off" if default is False else "on" if default is True else _as_text(typ, default))
        )
        tip = f"{field.description or label}. Default: {shown if shown != '' else 'empty'}."
        # What the value means, visible under the field without hovering (hints fit one field's width).
        meaning = self.hints.get(name) or field.description
        hint = f"{meaning} (default {shown if shown != '' else 'empty'})" if meaning else f"default: {shown}"
        if typ is bool:
            el = ui.switch(label, value=bool(default), on_change=self._changed)
        elif typ in (int, float):
            el = ui.number(label, value=default, on_change=self._changed)
            el.props("dense outlined")
            # Values go in as values: a props string built from data is parsed as markup.
            el.props["hint"] = hint
            if typ is int:
                el.props("step=1")
            if optional:
                el.props("clearable")
        else:
            el = ui.input(
                label,
                value=_as_text(typ, default),
                password=name in self.passwords,
                password_toggle_button=name in self.passwords,
                on_change=self._changed,
            )
            el.props("dense outlined")
            el.props["hint"] = hint
            if optional:
                el.props("clearable")
        if typ is not bool:
            # Errors come from pydantic (show_errors); NiceGUI's own check would wipe them on each change.
            el.without_auto_validation()
        if name in self.suffixes:
            el.props["suffix"] = self.suffixes[name]
        el.tooltip(tip)
        el.mark(f"field-{name}")
        self.inputs[name] = el

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def set_suffix(self, name: str, text: str) -> None:
        if name in self.inputs:
            self.inputs[name].props["suffix"] = text

    # ---- values ------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, el in self.inputs.items():
            typ, optional = self.kinds[name]
            v = el.value
            if typ is bool:
                out[name] = bool(v)
            elif typ in (int, float):
                if v is None or v == "":
                    if optional:
                        out[name] = None
                    else:
                        out[name] = v  # let pydantic say it is required
                elif typ is int and isinstance(v, float) and v.is_integer():
                    out[name] = int(v)
                else:
                    out[name] = v
            elif _is_str_list(typ):
                # Typed comma-separated: "10.0.0.4:50052, 10.0.0.5:50052".
                items = [p.strip() for p in str(v or "").split(",") if p.strip()]
                out[name] = None if optional and not items else items
            else:
                text = "" if v is None else str(v)
                out[name] = None if optional and not text.strip() else text
        for name, sub in self.nested.items():
            out[name] = sub.values()
        return out

    def set_values(self, values: dict[str, Any]) -> None:
        for name, v in values.items():
            if name in self.nested and isinstance(v, dict):
                self.nested[name].set_values(v)
            elif name in self.inputs:
                typ, _ = self.kinds[name]
                el = self.inputs[name]
                if typ is bool:
                    el.value = bool(v)
                elif typ in (int, float):
                    el.value = v
                else:
                    el.value = _as_text(typ, v)

    def reset(self) -> None:
        self.set_values(self.defaults)
        for sub in self.nested.values():
            sub.reset()

    # ---- errors ------------------------------------------------------------------------------
    def clear_errors(self) -> None:
        for el in self.inputs.values():
            if getattr(el, "error", None):
                el.error = None
        for sub in self.nested.values():
            sub.clear_errors()

    def show_errors(self, errors: list[dict[str, Any]]) -> list[str]:
        """Mark the fields named in pydantic ``errors``; returns messages that fit no field."""
        self.clear_errors()
        unplaced: list[str] = []
        for err in errors:
            loc = [str(p) for p in err.get("loc", ())]
            if not self._place(loc, error_text(err)):
                where = ".".join(loc)
                unplaced.append(f"{where}: {error_text(err)}" if where else error_text(err))
        return unplaced

    def _place(self, loc: list[str], message: str) -> bool:
        if not loc:
            return False
        head = loc[0]
        if head in self.nested:
            return self.nested[head]._place(loc[1:], message)
        el = self.inputs.get(head)
        if el is None or isinstance(el, ui.switch):
            return False
        el.error = message  # inputs are ValidationElements: this sets Quasar's error props
        return True

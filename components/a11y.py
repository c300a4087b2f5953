"""Names for controls that show only an icon or a bar, so screen readers can announce them.

A Quasar tooltip is a separate element that appears on hover: it gives a button no accessible name.
``named`` sets ``aria-label`` (passed by Quasar to the control's root, where its role is) and, for
sighted mouse users, the same words as a tooltip.
"""

from __future__ import annotations

from typing import TypeVar

from nicegui import ui

E = TypeVar("E", bound=ui.element)


def named(element: E, name: str, *, tooltip: bool = True) -> E:
    element.props["aria-label"] = name
    if tooltip:
        element.tooltip(name)
    return element


def rename(element: ui.element, name: str) -> None:
    """Change a named control's name (and its tooltip, when it has one)."""
    element.props["aria-label"] = name
    element.update()
    for child in element.default_slot.children:
        if isinstance(child, ui.tooltip):
            child.text = name


def heading(text: str, level: int = 2, classes: str = "text-h6") -> ui.label:
    """A real heading element (``h1``..``h3``) that looks like the app's other titles."""
    label = ui.label(text).classes(f"{classes} q-my-none")
    label.tag = f"h{level}"
    return label


def sr_only(text: str, tag: str = "span") -> ui.label:
    """Text for screen readers only (visually hidden, still in the accessibility tree)."""
    label = ui.label(text).classes("lm-sr-only")
    label.tag = tag
    return label

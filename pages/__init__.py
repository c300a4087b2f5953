"""NiceGUI pages. Each module registers one page; they render services, they own no logic."""

from __future__ import annotations

from llamaman.services import Services


def register(services: Services) -> None:
    from pages import home

    home.register(services)

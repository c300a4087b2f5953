"""NiceGUI pages. Each module registers one page; they render services, they own no logic."""

from __future__ import annotations

from llamaman.services import Services
from pages import activity, auth, downloads, instances, keys, launch, playground, settings, system
from pages.shell import Shell


def register(services: Services) -> None:
    shell = Shell(services)
    for module in (auth, instances, launch, downloads, playground, activity, keys, settings, system):
        module.register(services, shell)

"""NiceGUI pages. Each module registers one page; they render services, they own no logic."""

from __future__ import annotations

from llamaman.services import Services
from pages import activity, auth, downloads, instances, keys, launch, nodes, playground, settings, system
from pages.shell import Shell


def register(services: Services) -> None:
    shell = Shell(services)
    modules = (auth, instances, launch, downloads, playground, activity, nodes, keys, settings, system)
    for module in modules:
        module.register(services, shell)

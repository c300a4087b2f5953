"""Model names as clients send them: file stem, relative path or alias, with or without ``:latest``."""

from __future__ import annotations

from typing import Any

from llamaman.library.catalog import ModelEntry, ModelLibrary

_MISSING = object()


class ModelNames:
    def __init__(self, library: ModelLibrary) -> None:
        self.library = library
        self.aliases: dict[str, str] = {}
        # library.find walks every model; its answers hold until the next scan replaces the list.
        self._found_in: list[ModelEntry] | None = None
        self._found: dict[str, ModelEntry | None] = {}

    def resolve(self, name: str) -> ModelEntry | None:
        """The launchable model ``name`` stands for, or None."""
        if not name:
            return None
        base = name[: -len(":latest")] if name.endswith(":latest") else name
        target = self.aliases.get(name) or self.aliases.get(base) or name
        models = self.library.models
        if self._found_in is not models or len(self._found) > 4096:
            self._found_in, self._found = models, {}
        entry: Any = self._found.get(target, _MISSING)
        if entry is _MISSING:
            entry = self._found[target] = self.library.find(target)
        return entry if entry is not None and entry.launchable else None  # type: ignore[return-value]

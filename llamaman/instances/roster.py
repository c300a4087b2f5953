"""The instances a supervisor manages, and the lists of them the router asks for on every request."""

from __future__ import annotations

import builtins

from llamaman.instances import instance as kinds
from llamaman.instances.instance import ManagedInstance


class Roster:
    """The supervisor's instances by id (a base of ``Supervisor``). ``list`` and ``of_model`` are made
    again only after ``_changed``, which whoever adds or removes an instance calls: a record's model
    and creation time never change, and the router asks for them on every request."""

    def __init__(self) -> None:
        self.instances: dict[str, ManagedInstance] = {}
        self._listed: builtins.list[ManagedInstance] | None = None
        self._of_model: dict[str, tuple[ManagedInstance, ...]] = {}

    def list(self) -> builtins.list[ManagedInstance]:
        """Every instance, oldest first."""
        listed = self._listed
        if listed is None:
            listed = self._listed = sorted(self.instances.values(), key=lambda m: m.record.created_at)
        return listed.copy()  # the caller's own: it may remove instances as it goes

    def of_model(self, model_path: str) -> tuple[ManagedInstance, ...]:
        """The model's instances, oldest first."""
        found = self._of_model.get(model_path)
        if found is None:
            found = self._of_model[model_path] = tuple(
                m for m in self.list() if m.record.model_path == model_path
            )
        return found

    def get(self, instance_id: str) -> ManagedInstance:
        m = self.instances.get(instance_id)
        if m is None:
            raise kinds.InstanceNotFound(f"instance {instance_id!r} not found")
        return m

    def _changed(self) -> None:
        self._listed = None
        self._of_model.clear()

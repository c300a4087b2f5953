"""Which gate admits a request to an instance: its own, or with ``share_queue`` one gate for all of a
model's replicas (their places summed), and which replica then takes the admitted request.

A mixin of the router, which owns the slots and gates it reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llamaman.core.state import InstanceState
from llamaman.scheduling.gate import Gate

if TYPE_CHECKING:
    from llamaman.instances.supervisor import ManagedInstance
    from llamaman.scheduling.lease import Slot

S = InstanceState


class ReplicaGates:
    gates: dict[str, Gate]

    if TYPE_CHECKING:  # provided by the router

        def slot(self, m: ManagedInstance) -> Slot: ...
        def _instances_of(self, model_path: str) -> tuple[ManagedInstance, ...]: ...

    def gate_for(self, m: ManagedInstance) -> Gate:
        key = f"model:{m.record.model_path}" if m.settings.share_queue else m.id
        gate = self.gates.get(key)
        if gate is None:
            gate = self.gates[key] = Gate()
        if m.settings.share_queue:
            replicas = [r for r in self._instances_of(m.record.model_path) if r.settings.share_queue]
            conc = (
                sum(r.settings.max_concurrent for r in replicas)
                if all(r.settings.max_concurrent for r in replicas)
                else 0
            )
            gate.configure(conc, max((r.settings.max_queue_depth for r in replicas), default=0))
        else:
            # Configured again only when the settings changed (or someone waits: as before, a
            # configure hands out any place that is free), asked on every request as it is.
            settings = m.settings
            limits = (settings.max_concurrent, settings.max_queue_depth)
            if (gate.max_concurrent, gate.max_queue) != limits or gate.queued:
                gate.configure(*limits)
        return gate

    def _hand_to_freest_replica(self, m: ManagedInstance) -> ManagedInstance:
        """With a shared queue the request was admitted by the model's gate, not by one replica's:
        give it to whichever healthy replica has the fewest requests running now."""
        replicas = [
            r
            for r in self._instances_of(m.record.model_path)
            if r.settings.share_queue and r.state == S.HEALTHY and not self.slot(r).draining
        ]
        best = min(replicas, key=lambda r: self.slot(r).running, default=m)
        if best is not m:
            self.slot(m).move_to(self.slot(best))
        return best

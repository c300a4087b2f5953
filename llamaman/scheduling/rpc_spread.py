"""A model too large for this box alone, spread over llama.cpp RPC workers: which workers take the
offloaded layers, and what stays here. Pure: worker memory comes in as numbers.

llama-server started with ``--rpc`` treats each worker as one more offload device and puts the
offloaded layers (``-ngl``) on them, with their KV cache; the token embeddings, the process and
anything not offloaded stay on this host. On a box without GPUs that split is clean: the workers
hold the offloaded part of the footprint, this host its host part. On a box with GPUs llama.cpp
divides the layers between its own GPUs and the workers by their free memory, which the scheduler
does not model yet, so such a box never spreads a model by itself (a preset may still name workers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llamaman.scheduling.footprint import Footprint
from llamaman.scheduling.placement import CPU


@dataclass(frozen=True)
class Spread:
    """What stays here (a host-only footprint) and the workers that take the rest."""

    local: Footprint
    workers: tuple[str, ...]


def choose_workers(free: Mapping[str, int], needed: int) -> list[str]:
    """The fewest workers whose free memory together covers ``needed`` bytes, largest first (by
    address on a tie); empty when all of them together are not enough."""
    chosen: list[str] = []
    total = 0
    for address, room in sorted(free.items(), key=lambda kv: (-kv[1], kv[0])):
        if total >= needed:
            break
        chosen.append(address)
        total += room
    return chosen if total >= needed else []


def host_part(fp: Footprint) -> Footprint:
    """The part of a fully offloaded model this host keeps, as a footprint of its own."""
    return Footprint(cpu_only=fp.host_full, gpu_full=0, host_full=fp.host_full, slots=1, measured=fp.measured)


def spread(
    fp: Footprint, limits: Mapping[str, int], workers: Mapping[str, int], named: Sequence[str] = ()
) -> Spread | None:
    """The model over workers: ``named`` ones (a preset's choice, taken as given) or the fewest that
    hold its offloaded part; None where this host has GPUs, cannot hold its own part, or the workers
    are not enough."""
    if any(d != CPU for d in limits) or fp.gpu_full <= 0:
        return None
    local = host_part(fp)
    if local.cpu_only > limits.get(CPU, 0):
        return None
    chosen = list(named) or choose_workers(workers, fp.gpu_full)
    return Spread(local, tuple(chosen)) if chosen else None

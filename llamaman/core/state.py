"""Instance states and the one place that decides which transitions are legal."""

from __future__ import annotations

from enum import StrEnum


class InstanceState(StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    SLEEPING = "sleeping"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


S = InstanceState

# A failed or stopped instance can be started again (restart, wake); a sleeping one only wakes
# (starting) or is stopped for good. "stopping" ends in stopped, sleeping or failed.
_ALLOWED: dict[InstanceState, frozenset[InstanceState]] = {
    S.STOPPED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.HEALTHY, S.FAILED, S.STOPPING}),
    S.HEALTHY: frozenset({S.STOPPING, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.SLEEPING, S.FAILED}),
    S.SLEEPING: frozenset({S.STARTING, S.STOPPED}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED}),
}

ACTIVE_STATES = frozenset({S.STARTING, S.HEALTHY, S.STOPPING})


class IllegalTransition(RuntimeError):
    pass


def can_transition(current: InstanceState, new: InstanceState) -> bool:
    return new in _ALLOWED[current]


def check_transition(current: InstanceState, new: InstanceState) -> InstanceState:
    if not can_transition(current, new):
        raise IllegalTransition(f"cannot go from {current} to {new}")
    return new

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
    # Died on its own; started again after a backoff (``instances/recovery.py``). No process runs.
    RESTARTING = "restarting"


S = InstanceState

# A failed or stopped instance can be started again (restart, wake); a sleeping one only wakes
# (starting) or is stopped for good. "stopping" ends in stopped, sleeping or failed. A server that
# dies on its own while serving (or while a restart loads it) is "restarting" until its next start;
# it fails for good once the restarts allowed are spent, and may be stopped while it waits.
_ALLOWED: dict[InstanceState, frozenset[InstanceState]] = {
    S.STOPPED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.HEALTHY, S.FAILED, S.STOPPING, S.RESTARTING}),
    S.HEALTHY: frozenset({S.STOPPING, S.FAILED, S.RESTARTING}),
    S.STOPPING: frozenset({S.STOPPED, S.SLEEPING, S.FAILED}),
    S.SLEEPING: frozenset({S.STARTING, S.STOPPED}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED}),
    S.RESTARTING: frozenset({S.STARTING, S.STOPPING, S.FAILED}),
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

"""What went wrong, said in the domain's words; never an HTTP status.

Core packages raise these (or a family class of their own that also derives from one kind, e.g.
``InstanceConflict(InstanceError, Conflict)``). Each HTTP surface maps the kind to its answer in one
place: ``gateway/dialects.py`` (``REST_STATUS`` for the REST API, ``MODEL_STATUS`` for the Ollama,
OpenAI and Anthropic endpoints).
"""

from __future__ import annotations

from collections.abc import Callable


class LlamaManError(Exception):
    """A refusal or failure a caller can act on; ``message`` is shown to them as is."""

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Seconds after which trying again may succeed (a full queue, a sign-in throttle).
        self.retry_after = retry_after

    @property
    def status_code(self) -> int | None:
        """The REST API's status for this error, for callers (and tests) that report it; the
        surface registers the lookup so this module never holds a status number."""
        return _status_source(self) if _status_source is not None else None


class Invalid(LlamaManError):
    """The input is malformed or names something impossible."""


class Rejected(LlamaManError):
    """Well-formed input that a rule refuses (the launch policy)."""


class Forbidden(LlamaManError):
    """The caller may not do this (a wrong password, a token the hub refuses)."""


class NotFound(LlamaManError):
    """What the request names does not exist."""


class Conflict(LlamaManError):
    """The request clashes with the current state (a port in use, a name taken, work already done)."""


class Throttled(LlamaManError):
    """Too much at once; ``retry_after`` says when to try again."""


class UpstreamFailed(LlamaManError):
    """A remote party (the hub, a download host, llama-server) failed or refused."""


class Unavailable(LlamaManError):
    """Cannot be done now (still starting, no binary, a model that failed to load); retry later."""


class StorageFull(LlamaManError):
    """The disk refused the write."""


KINDS: tuple[type[LlamaManError], ...] = (
    Invalid, Rejected, Forbidden, NotFound, Conflict, Throttled, UpstreamFailed, Unavailable, StorageFull,
)  # fmt: skip


def kind_of(exc: LlamaManError) -> type[LlamaManError]:
    """The kind an error is (the first one in its class's MRO); the base class when it has none."""
    for cls in type(exc).__mro__:
        if cls in KINDS:
            return cls
    return LlamaManError


_status_source: Callable[[LlamaManError], int] | None = None


def use_status_source(source: Callable[[LlamaManError], int]) -> None:
    global _status_source
    _status_source = source

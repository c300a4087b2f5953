"""Which credentials each path needs: the one table the auth middleware and its tests read.

Four classes:

* ``OPEN``: anyone (health probes, signing in, the files the sign-in page needs).
* ``MODEL``: the model endpoints. With require-auth on they need an API key (either scope), or a
  signed-in session on the main port (the session cookie counts nowhere else: pages on other ports of
  the same host are same-site and the browser would send it along); with it off they are open. Their
  POSTs take JSON bodies only, so no page can send them a "simple" cross-site request.
* ``MODEL_ADMIN``: the model endpoints that change the box (Ollama's delete, copy, pull, push,
  create). Always an ``admin`` key or a signed-in session, whatever the toggle says: an Ollama client
  speaks to them with the same key it chats with, and that key must not be able to delete models.
* ``MANAGE``: everything that changes or reveals the box (REST API, docs, UI pages). Always an
  ``admin`` key or a session, whatever the toggle says. Keys limited to some models are refused here
  even with the admin scope, so a restricted key cannot mint itself an unrestricted one. A ``viewer``
  account may only read.

API keys have a scope (``identity.Identity.scope``): ``inference`` keys (the default) reach ``MODEL``
only; ``admin`` keys reach everything. ``allows()`` says whether a kind of credential passes a class
with the require-auth toggle on or off; the middleware and the access matrix test both follow it.

The first matching rule wins. A path no rule names is ``MANAGE`` (the safe side), and the access
matrix test fails for any route that only the default covers, so a new route is classified on purpose.
Ollama's endpoints share ``/api/`` with the REST API, so they are listed one by one before ``/api/*``.
Patterns are ``fnmatch`` globs over the path (``*`` also crosses ``/``).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Surface = Literal["main", "proxy", "instance"]
ALL: frozenset[str] = frozenset({"main", "proxy", "instance"})
MAIN: frozenset[str] = frozenset({"main"})
PROXY: frozenset[str] = frozenset({"proxy"})
INSTANCE: frozenset[str] = frozenset({"instance"})


class Access(StrEnum):
    OPEN = "open"
    MODEL = "model"
    MODEL_ADMIN = "model-admin"
    MANAGE = "manage"


# The classes whose refusals speak the model dialects (Ollama, OpenAI, Anthropic), not the REST API's.
MODEL_SURFACE: frozenset[Access] = frozenset({Access.MODEL, Access.MODEL_ADMIN})
# The classes only an admin key or a signed-in user may use.
ADMIN_ONLY: frozenset[Access] = frozenset({Access.MODEL_ADMIN, Access.MANAGE})


@dataclass(frozen=True)
class Rule:
    pattern: str
    access: Access
    surfaces: frozenset[str]
    why: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(fnmatch.translate(self.pattern)))

    def matches(self, path: str, surface: str) -> bool:
        return surface in self.surfaces and self._regex.match(path) is not None  # type: ignore[attr-defined]


# Ollama's API, listed one by one: the rest of /api/ is LlamaMan's REST API.
OLLAMA_PATHS = (
    "/api/chat", "/api/generate", "/api/tags", "/api/ps", "/api/show", "/api/embed", "/api/embeddings",
    "/api/version",
)  # fmt: skip
# Ollama's routes that delete, copy, download or create models: they change the box, so they need an
# admin key or a session even though they speak Ollama. /api/blobs/* is where /api/create uploads.
OLLAMA_ADMIN_PATHS = ("/api/delete", "/api/copy", "/api/pull", "/api/push", "/api/create", "/api/blobs/*")
# llama-server's own endpoints as the proxy exposes them (routed by body "model" or "?model=").
NATIVE_PATHS = (
    "/completion", "/completions", "/chat/completions", "/infill", "/rerank", "/reranking", "/tokenize",
    "/detokenize", "/embedding", "/embeddings", "/apply-template", "/props", "/slots", "/upstream/*",
)  # fmt: skip

OPEN, MODEL, MODEL_ADMIN, MANAGE = Access.OPEN, Access.MODEL, Access.MODEL_ADMIN, Access.MANAGE

RULES: tuple[Rule, ...] = (
    Rule("/health", OPEN, ALL, "liveness probes (Docker, load balancers)"),
    Rule("/api/auth/login", OPEN, MAIN, "signing in"),
    Rule("/api/auth/setup", OPEN, MAIN, "first admin; refuses once a user exists"),
    Rule("/api/auth/logout", OPEN, MAIN, "clearing a cookie needs no credentials"),
    Rule("/api/auth/session", OPEN, MAIN, "exchanges a one-time sign-in ticket for the cookie"),
    Rule("/login", OPEN, MAIN, "sign-in page"),
    Rule("/setup", OPEN, MAIN, "first-admin page"),
    Rule("/_nicegui/*", OPEN, MAIN, "NiceGUI's scripts and styles, needed to render the sign-in page"),
    Rule("/_nicegui_ws/*", OPEN, MAIN, "NiceGUI's socket; it only serves pages that were rendered"),
    Rule("/favicon.ico", OPEN, MAIN, "browser icon"),
    *(
        Rule(p, MODEL_ADMIN, ALL, "Ollama API that changes the box: admin key or session, always")
        for p in OLLAMA_ADMIN_PATHS
    ),
    *(Rule(p, MODEL, ALL, "Ollama API") for p in OLLAMA_PATHS),
    # llama-server serves nothing else under /api/: on an instance port these paths are refused the
    # way the REST API is on the other ports, so a key's scope reads the same on every port.
    Rule("/api/*", MANAGE, INSTANCE, "LlamaMan's REST paths, on an instance port too"),
    # Everything else on an instance port is that model's llama-server (its web UI included).
    Rule("*", MODEL, INSTANCE, "per-instance port: one model's llama-server"),
    Rule("/v1/*", MODEL, ALL, "OpenAI API and Anthropic /v1/messages"),
    *(Rule(p, MODEL, ALL, "llama-server native") for p in NATIVE_PATHS),
    Rule("/models", MODEL, ALL, "llama.cpp router mode: list"),
    # Load and unload stay model endpoints: loading is what any first request to a model does, and
    # unloading is what Ollama's keep_alive: 0 on /api/chat does; the allow-list applies to both.
    Rule("/models/load", MODEL, ALL, "llama.cpp router mode: load (what any first request does)"),
    Rule("/models/unload", MODEL, ALL, "llama.cpp router mode: unload (what Ollama's keep_alive: 0 does)"),
    Rule("/models/sse", MODEL, ALL, "llama.cpp router mode: model status and load progress events"),
    Rule("/", MODEL, PROXY, "Ollama's 'is running' probe on the proxy port (the UI's home on the main port)"),
    Rule("/api/placement", MANAGE, ALL, "memory per device and where each model lives"),
    Rule("/api/workers", MANAGE, ALL, "llama.cpp RPC workers: addresses, memory, liveness"),
    Rule("/api/nodes", MANAGE, ALL, "the boxes sharing this database: health, models, memory, load"),
    Rule("/api/logs/llamaman", MANAGE, ALL, "LlamaMan's own log: admin only (it names keys and paths)"),
    Rule("/api/inflight*", MANAGE, ALL, "requests in flight: admins and users list them, admins cancel"),
    Rule("/api/peers*", MANAGE, ALL, "static peers: their URLs and keys are the box's configuration"),
    Rule("/api/*", MANAGE, ALL, "LlamaMan REST API, including any future /api route"),
    Rule("/docs", MANAGE, ALL, "OpenAPI docs"),
    Rule("/docs/*", MANAGE, ALL, "OpenAPI docs"),
    Rule("/redoc", MANAGE, ALL, "OpenAPI docs"),
    Rule("/openapi.json", MANAGE, ALL, "OpenAPI schema"),
    Rule("/metrics", MANAGE, ALL, "Prometheus metrics (scrapers send a bearer key)"),
)

DEFAULT = Access.MANAGE


@functools.lru_cache(maxsize=4096)  # a hot path: every request of every surface asks
def match(path: str, surface: str) -> Rule | None:
    """The rule that decides ``path`` on ``surface``; None when only the default applies."""
    for rule in RULES:
        if rule.matches(path, surface):
            return rule
    return None


def classify(path: str, surface: str) -> Access:
    rule = match(path, surface)
    return rule.access if rule is not None else DEFAULT


Credential = Literal["anonymous", "inference", "admin", "user"]


def allows(access: Access, credential: Credential, *, require_auth: bool) -> bool:
    """Whether ``credential`` may use a path of class ``access``: the table's meaning in one place.

    ``user`` is a signed-in session; ``admin`` and ``inference`` are API keys of that scope (not
    limited to some models; a limited key's model checks come on top of this)."""
    if access is Access.OPEN:
        return True
    if access in ADMIN_ONLY:
        return credential in ("admin", "user")
    return credential != "anonymous" or not require_auth


def table_markdown() -> str:
    """The table as Markdown (kept in the README and printed by the tests when they fail)."""
    lines = ["| Path | Access | Surfaces | Why |", "|---|---|---|---|"]
    for r in RULES:
        surfaces = "all" if r.surfaces == ALL else ", ".join(sorted(r.surfaces))
        lines.append(f"| `{r.pattern}` | {r.access.value} | {surfaces} | {r.why} |")
    lines.append(f"| anything else | {DEFAULT.value} | all | UI pages on the main port; the safe default |")
    return "\n".join(lines)


def scopes_markdown() -> str:
    """Who passes each class, as ``allows()`` decides (kept in the README beside the table)."""
    columns: tuple[tuple[str, Credential, bool], ...] = (
        ("nobody, require-auth on", "anonymous", True),
        ("nobody, require-auth off", "anonymous", False),
        ("inference key", "inference", True),
        ("admin key", "admin", True),
        ("signed-in user", "user", True),
    )
    lines = ["| Access | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for access in Access:
        cells = ["yes" if allows(access, cred, require_auth=on) else "no" for _, cred, on in columns]
        lines.append(f"| {access.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

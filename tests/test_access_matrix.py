"""Every route of every surface, with every kind of credential (nothing, bad or dead keys, an inference
key, one limited to some models, an admin key, a signed-in session), with the require-auth toggle on
and off, against the access table in ``llamaman.auth.access`` and its ``allows()``.

The routes come from the apps themselves (the main app, the proxy app, a per-instance listener app),
so a route added later is checked without touching this file; a route the table does not name fails.
Requests name a model that does not exist, so an allowed request ends in 404/400/422 instead of
starting anything.
"""

from __future__ import annotations

import base64
import importlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message

from llamaman.app import LlamaMan
from llamaman.auth.access import MODEL_SURFACE, Access, Credential, allows, classify, match, table_markdown
from llamaman.auth.sessions import SESSION_COOKIE
from llamaman.core.config import Settings
from llamaman.gateway.middleware import AuthMiddleware
from tests.helpers import StreamingASGITransport

pytestmark = pytest.mark.auth

NO_MODEL = "no-such-model-xyz"
# Enough fields for every endpoint to get past body validation to the model lookup; none of them is a
# field of the REST bodies, whose validation refuses them with 422 before anything is changed.
BODY = {
    "model": NO_MODEL, "source": NO_MODEL, "destination": f"{NO_MODEL}-copy", "prompt": "hi",
    "messages": [{"role": "user", "content": "hi"}], "input": "hi", "content": "hi", "tokens": [1],
    "max_tokens": 1, "stream": False,
}  # fmt: skip
PARAMS = {
    "instance_id": "nope", "download_id": "nope", "benchmark_id": "nope", "key_id": "nope",
    "model_path": f"{NO_MODEL}.gguf", "model_id": NO_MODEL, "target": f"{NO_MODEL}/v1/models",
    "path": "no-such-route",
}  # fmt: skip
# Paths tried on a catch-all route (the per-instance listener passes any path through).
CATCH_ALL_SAMPLES = ("/", "/v1/chat/completions", "/completion", "/api/instances", "/api/tags", "/metrics")
CASES = ("none", "malformed", "unknown", "revoked", "expired", "inference", "restricted", "admin", "session")
# What each case counts as for the table: a bad or dead credential is no credential.
AS: dict[str, Credential] = {
    "none": "anonymous", "malformed": "anonymous", "unknown": "anonymous", "revoked": "anonymous",
    "expired": "anonymous", "inference": "inference", "restricted": "inference", "admin": "admin",
    "session": "user",
}  # fmt: skip
MALFORMED = (
    {"Authorization": "Basic %%%not-base64"},
    {"Authorization": "Bearer"},
    {"Authorization": "Token abc"},
    {"x-api-key": " "},
    {"Authorization": "Basic " + base64.b64encode(b"user-without-password:").decode()},
)


@dataclass(frozen=True)
class Probe:
    surface: str
    method: str
    template: str
    path: str


@dataclass
class Keys:
    inference: str
    restricted: str
    admin: str
    revoked: str
    expired: str
    session: str

    @property
    def valid(self) -> str:
        return self.admin

    def headers(self, case: str, n: int) -> dict[str, str]:
        """Headers for ``case``; ``n`` rotates between the ways a key or a bad header can be sent."""
        if case == "malformed":
            return dict(MALFORMED[n % len(MALFORMED)])
        if case == "unknown":
            return {"Authorization": "Bearer llm-" + "x" * 43}
        if case in ("revoked", "expired", "inference", "restricted", "admin"):
            key = getattr(self, case)
            basic = base64.b64encode(f"any:{key}".encode()).decode()
            ways = (
                {"Authorization": f"Bearer {key}"},
                {"x-api-key": key},
                {"Authorization": f"Basic {basic}"},
            )
            return dict(ways[n % len(ways)])
        if case == "session":
            return {"Cookie": f"{SESSION_COOKIE}={self.session}", "Origin": "http://llamaman.test"}
        return {}


def flat_routes(app: Any) -> Iterator[tuple[str, set[str]]]:
    """(path template, methods) of every HTTP route of ``app``, included routers flattened."""
    try:
        from fastapi.routing import iter_route_contexts

        contexts: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # older FastAPI: included routes are plain routes already
        contexts = list(app.routes)
    for route in contexts:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path is None or getattr(route, "original_route", route).__class__.__name__.startswith("WebSocket"):
            continue
        yield path, set(methods or {"GET"})


def concrete(template: str) -> list[str]:
    if template in ("/{path:path}", "/{full_path:path}"):
        return list(CATCH_ALL_SAMPLES)
    return [re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PARAMS.get(m.group(1), "nope"), template)]


def probes(surface: str, app: Any) -> list[Probe]:
    out = []
    for template, methods in flat_routes(app):
        for method in sorted(methods - ({"HEAD"} if "GET" in methods else set())):
            out.extend(Probe(surface, method, template, p) for p in concrete(template))
    return out


def expected_status(access: Access, case: str, require_auth: bool, surface: str) -> int | None:
    """None when the request must pass, else the refusal: 401 without a usable credential, 403 for a
    key whose scope does not reach the path. A session passes everything on the main port and counts
    nowhere else (the cookie belongs where the UI lives); the restricted key's list covers the model
    these requests name."""
    credential = AS[case]
    if case == "session" and surface != "main":
        credential = "anonymous"
    if allows(access, credential, require_auth=require_auth):
        return None
    return 401 if credential == "anonymous" else 403


@pytest.fixture
async def box(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[LlamaMan, Keys]]:
    services = LlamaMan(make_settings())
    await services.start()
    try:
        keys = services.auth.keys
        _, inference = await keys.create("matrix")
        _, restricted = await keys.create("matrix-restricted", allowed_models=[f"{NO_MODEL}*"])
        _, admin_key = await keys.create("matrix-admin", scope="admin")
        revoked_record, revoked = await keys.create("matrix-revoked", scope="admin")
        await keys.revoke(revoked_record.id)
        expired_record, expired = await keys.create("matrix-expired", scope="admin")
        await keys.update(expired_record.id, {"expires_at": time.time() - 1})
        admin = await services.auth.create_first_admin("admin", "a long password")
        yield (
            services,
            Keys(inference, restricted, admin_key, revoked, expired, await services.auth.new_session(admin)),
        )
    finally:
        await services.stop()


def surfaces(services: LlamaMan) -> dict[str, ASGIApp]:
    from llamaman.app import create_app

    apps: dict[str, ASGIApp] = {"main": create_app(services, manage_lifecycle=False)}
    try:
        from llamaman.proxy.app import create_proxy_app
    except ImportError:
        pass
    else:
        apps["proxy"] = create_proxy_app(services)
    try:
        listeners = importlib.import_module("llamaman.proxy.listeners")
    except ImportError:
        listeners = None
    if listeners is not None and hasattr(listeners, "create_instance_app"):
        wrap = getattr(getattr(services, "listeners", None), "wrap", None)
        assert wrap is not None, "instance listeners are not guarded: set services.listeners.wrap"
        apps["instance"] = wrap(listeners.create_instance_app(services, "no-such-instance"))
    return apps


def test_every_route_is_classified(box: tuple[LlamaMan, Keys]) -> None:
    services, _ = box
    missing = []
    for surface, app in surfaces(services).items():
        for probe in probes(surface, app):
            if match(probe.path, surface) is None:
                missing.append(f"{surface}: {probe.method} {probe.template}")
    listing = "\n".join(missing)
    assert not missing, f"routes the access table does not name:\n{listing}\n{table_markdown()}"


@pytest.mark.parametrize("require_auth", [True, False], ids=["auth-on", "auth-off"])
async def test_access_matrix(box: tuple[LlamaMan, Keys], require_auth: bool) -> None:
    services, keys = box
    await services.runtime.update({"require_auth": require_auth})  # read per request: no app rebuild
    problems: list[str] = []
    checked = 0
    for surface, app in surfaces(services).items():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://llamaman.test") as client:
            for n, probe in enumerate(probes(surface, app)):
                access = classify(probe.path, surface)
                for case in CASES:
                    if probe.path in EVENT_STREAMS:
                        r = await _head_of_stream(app, probe.path, keys.headers(case, n))
                    else:
                        r = await client.request(
                            probe.method, probe.path, headers=keys.headers(case, n),
                            json=BODY if probe.method in ("POST", "PUT", "PATCH", "DELETE") else None,
                        )  # fmt: skip
                    checked += 1
                    if probe.path == "/api/auth/logout" and case == "session":  # it ended the session
                        admin = services.auth.user_by_name("admin")
                        assert admin is not None
                        keys.session = await services.auth.new_session(admin)
                    want = expected_status(access, case, require_auth, surface)
                    problem = _judge(r, access, probe.path, want)
                    if problem:
                        problems.append(f"{surface} {probe.method} {probe.path} [{access}] {case}: {problem}")
    assert checked > 900
    assert not problems, f"{len(problems)} unexpected answers:\n" + "\n".join(problems[:60])


# Endpoints that stream until the client leaves: only their status and first bytes are read.
EVENT_STREAMS = frozenset({"/models/sse"})


async def _head_of_stream(app: Any, path: str, headers: dict[str, str]) -> httpx.Response:
    transport = StreamingASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://llamaman.test") as client:
        async with client.stream("GET", path, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
            return r


def _judge(r: httpx.Response, access: Access, path: str, want: int | None) -> str | None:
    if want is None:
        if r.status_code in (401, 403):
            return f"refused with {r.status_code}: {r.text[:200]}"
        if r.status_code == 500:  # 503 (the instance is not running) is an answer
            return f"server error: {r.text[:200]}"
        return None
    if r.status_code != want:
        return f"expected {want}, got {r.status_code}: {r.text[:200]}"
    if want == 401 and "bearer" not in r.headers.get("www-authenticate", "").lower():
        return "401 without WWW-Authenticate: Bearer"
    if r.request.method == "HEAD":
        return None  # no body to speak any dialect in
    return _dialect_problem(r.json(), access, path, want)


def _dialect_problem(body: Any, access: Access, path: str, status: int = 401) -> str | None:
    """Refusals speak the client's language: Ollama, OpenAI, Anthropic or the REST API's."""
    model = access in MODEL_SURFACE
    if model and path.startswith("/api/"):
        ok = isinstance(body.get("error"), str)
    elif model and path.startswith("/v1/messages"):
        kind = "authentication_error" if status == 401 else "permission_error"
        ok = body.get("type") == "error" and body["error"]["type"] == kind
    elif model:
        code = "invalid_api_key" if status == 401 else "permission_denied"
        ok = isinstance(body.get("error"), dict) and body["error"]["code"] == code
    else:
        ok = isinstance(body.get("error"), str) and body.get("detail") == body["error"]
    return None if ok else f"refusal in the wrong dialect: {body}"


def test_rest_routes_are_management_and_proxy_routes_are_model_endpoints() -> None:
    """The table against the routers themselves: what the REST API serves is management, what the
    proxy serves is a model endpoint, so a pattern that swallows the wrong route is caught."""
    from fastapi import FastAPI

    from llamaman.api import build_router
    from llamaman.proxy.app import build_proxy_router

    sign_in = {"/api/auth/login", "/api/auth/setup", "/api/auth/logout", "/api/auth/session", "/health"}
    wrong = []
    manage: frozenset[Access] = frozenset({Access.MANAGE})
    for surface, router, want in (
        ("main", build_router(), manage),
        ("main", build_proxy_router(include_root=False), MODEL_SURFACE),
        ("proxy", build_proxy_router(include_root=True), MODEL_SURFACE),
    ):
        app = FastAPI()
        app.include_router(router)
        for probe in probes(surface, app):
            if probe.template in sign_in or probe.template.startswith(("/docs", "/openapi", "/redoc")):
                continue
            if classify(probe.path, surface) not in want:
                wrong.append(f"{surface} {probe.method} {probe.path}: {classify(probe.path, surface)}")
    assert not wrong, "\n".join(wrong)


def test_table_decides_the_paths_that_have_no_route_here() -> None:
    # NiceGUI's files and socket stay reachable so the sign-in page renders; pages need a session.
    assert classify("/_nicegui/3.0.0/static/quasar.js", "main") is Access.OPEN
    assert classify("/_nicegui_ws/socket.io/", "main") is Access.OPEN
    assert classify("/login", "main") is Access.OPEN and classify("/setup", "main") is Access.OPEN
    assert classify("/", "main") is Access.MANAGE and classify("/instances", "main") is Access.MANAGE
    assert classify("/", "proxy") is Access.MODEL  # Ollama's "is running" probe
    # Ollama's routes that change the box need an admin key or a session, whatever the toggle says.
    for path in (
        "/api/pull",
        "/api/delete",
        "/api/copy",
        "/api/push",
        "/api/create",
        "/api/blobs/sha256:abc",
    ):
        assert classify(path, "main") is Access.MODEL_ADMIN and classify(path, "proxy") is Access.MODEL_ADMIN
    assert (
        classify("/api/chat", "proxy") is Access.MODEL and classify("/models/unload", "proxy") is Access.MODEL
    )
    assert classify("/api/some-future-route", "proxy") is Access.MANAGE
    assert classify("/api/tags/", "main") is Access.MANAGE  # only Ollama's exact paths are model endpoints
    assert classify("/anything", "instance") is Access.MODEL
    assert classify("/health", "instance") is Access.OPEN
    assert match("/brand-new-page", "main") is None  # left to the default, which the matrix refuses


async def test_browsers_are_sent_to_setup_then_to_sign_in(box: tuple[LlamaMan, Keys]) -> None:
    services, _ = box
    app = surfaces(services)["main"]
    html = {"Accept": "text/html,application/xhtml+xml"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/instances?x=1", headers=html)
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Finstances%3Fx%3D1"
        assert (await c.get("/api/instances", headers=html)).status_code == 401  # APIs never redirect
        users = dict(services.auth._users)
        services.auth._users.clear()  # as before the first admin exists
        try:
            r = await c.get("/", headers=html)
            assert r.status_code == 303 and r.headers["location"] == "/setup"
        finally:
            services.auth._users.update(users)


async def test_websockets_to_guarded_paths_are_closed(box: tuple[LlamaMan, Keys]) -> None:
    services, keys = box
    reached: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    guard = AuthMiddleware(inner, services, "main")

    async def connect(path: str, headers: list[tuple[bytes, bytes]]) -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "websocket.connect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": path, "headers": headers, "query_string": b""}
        await guard(scope, receive, send)
        return sent

    [refusal] = await connect("/api/instances/x/ws", [])
    assert refusal["type"] == "websocket.close" and refusal["code"] == 1008
    assert await connect("/_nicegui_ws/socket.io/", []) == []
    assert await connect("/api/instances/x/ws", [(b"authorization", f"Bearer {keys.valid}".encode())]) == []
    assert reached == ["/_nicegui_ws/socket.io/", "/api/instances/x/ws"]


def test_the_readme_carries_the_table_as_the_code_has_it() -> None:
    from pathlib import Path

    from llamaman.auth.access import scopes_markdown

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, table in (("table_markdown", table_markdown()), ("scopes_markdown", scopes_markdown())):
        assert table in readme, (
            f"README.md is behind llamaman.auth.access: paste access.{name}() into it:\n{table}"
        )


def test_scopes_and_classes() -> None:
    """``allows`` is the table's meaning: what each kind of credential passes, toggle on and off."""
    everyone: tuple[Credential, ...] = ("anonymous", "inference", "admin", "user")
    for on in (True, False):
        assert all(allows(Access.OPEN, c, require_auth=on) for c in everyone)
        for access in (Access.MODEL_ADMIN, Access.MANAGE):
            assert [c for c in everyone if allows(access, c, require_auth=on)] == ["admin", "user"]
        assert allows(Access.MODEL, "inference", require_auth=on)
    assert not allows(Access.MODEL, "anonymous", require_auth=True)
    assert allows(Access.MODEL, "anonymous", require_auth=False)
    # The instance port refuses LlamaMan's REST paths as the other ports do, and keeps Ollama's.
    assert classify("/api/instances", "instance") is Access.MANAGE
    assert classify("/api/delete", "instance") is Access.MODEL_ADMIN
    assert classify("/api/chat", "instance") is Access.MODEL

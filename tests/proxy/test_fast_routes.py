"""The proxy's fast routes answer with the same handlers FastAPI's own routing would pick."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.routing import APIRoute
from starlette.routing import Match

from llamaman.proxy.app import FAST_ROUTES, ProxyServer, build_proxy_router


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute in include order, nested routers flattened."""
    out: list[APIRoute] = []
    for r in routes:
        if isinstance(r, APIRoute):
            out.append(r)
        elif hasattr(r, "original_router"):
            out += _api_routes(r.original_router.routes)
        elif hasattr(r, "routes"):
            out += _api_routes(r.routes)
    return out


def test_fast_routes_are_the_routers_own_handlers() -> None:
    routes = _api_routes(build_proxy_router(include_root=True).routes)
    for path, handler in FAST_ROUTES.items():
        scope = {"type": "http", "path": path, "method": "POST", "root_path": "", "path_params": {}}
        matching = [r for r in routes if r.matches(scope)[0] == Match.FULL]
        assert matching, f"no route serves POST {path}"
        assert matching[0].endpoint is handler, f"POST {path}: FastAPI would call {matching[0].endpoint}"
        # Only the catch-all may also match; nothing ahead of the exact route.
        assert all("{" in r.path for r in matching[1:]), [r.path for r in matching]


async def test_fast_route_errors_speak_the_clients_dialect(
    proxy: ProxyServer, http: httpx.AsyncClient
) -> None:
    r = await http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = await http.post("/v1/chat/completions", json={"model": "no-such-model", "messages": []})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    # Other methods on the same paths still go through FastAPI (405, not a fast-route answer).
    assert (await http.get("/v1/chat/completions")).status_code == 405


async def test_ollama_and_anthropic_fast_routes_answer_in_their_own_dialects(
    proxy: ProxyServer, http: httpx.AsyncClient
) -> None:
    for path in ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/v1/messages"):
        assert path in FAST_ROUTES, path
    r = await http.post("/api/chat", json={"model": "no-such-model", "messages": []})
    assert r.status_code == 404 and r.json() == {"error": "model 'no-such-model' not found"}
    r = await http.post("/api/embed", json={"model": "no-such-model", "input": "x"})
    assert r.status_code == 404 and "error" in r.json()
    r = await http.post("/v1/messages", json={"model": "no-such-model", "max_tokens": 5, "messages": []})
    assert r.status_code == 404 and r.json()["type"] == "error", r.text
    assert (await http.get("/api/chat")).status_code == 405

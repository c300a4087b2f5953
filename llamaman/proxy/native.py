"""llama-server's own endpoints behind the one proxy port, routed the way llama.cpp's router mode
routes them: POST bodies by their ``model`` field, GETs by ``?model=``. ``/upstream/{model}/...``
reaches any path of a model's server as-is (llama-swap's escape hatch)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llamaman.gateway.bodies import cached_body
from llamaman.proxy.common import ProxyError, lease_for, services_of
from llamaman.proxy.openai import check_autoload, pass_through, upstream_params
from llamaman.services import Services
from llamaman.upstream.client import upstream_path
from llamaman.upstream.relay import forward_headers

router = APIRouter(tags=["llama-server"])

# Native routes whose bodies carry sampling parameters the instance may force.
_GENERATING = ("/completion", "/completions", "/infill", "/chat/completions")
_OTHER = (
    "/rerank", "/reranking", "/v1/rerank", "/v1/reranking", "/tokenize", "/detokenize",
    "/embedding", "/embeddings", "/apply-template",
)  # fmt: skip


def _post_route(path: str, sampling: bool) -> None:
    async def handler(request: Request) -> Response:
        return await pass_through(request, path, sampling=sampling)

    handler.__name__ = "native_" + path.strip("/").replace("/", "_").replace("-", "_")
    router.add_api_route(path, handler, methods=["POST"], include_in_schema=True)


for _path in _GENERATING:
    _post_route(_path, True)
for _path in _OTHER:
    _post_route(_path, False)


async def _get_by_query(request: Request, path: str) -> Response:
    services = services_of(request)
    model = request.query_params.get("model", "").strip()
    if not model:
        raise ProxyError(400, f"GET {path} needs ?model=NAME naming the model to ask")
    await check_autoload(services, request, model)
    lease = await lease_for(services, model)
    return await services.relay.forward(
        lease, "GET", path, headers=forward_headers(request.headers), params=upstream_params(request)
    )


@router.get("/props")
async def props(request: Request) -> Response:
    return await _get_by_query(request, "/props")


@router.get("/slots")
async def slots(request: Request) -> Response:
    return await _get_by_query(request, "/slots")


def _split_target(services: Services, target: str) -> tuple[str, str] | None:
    """``org/model/v1/models`` -> (``org/model``, ``/v1/models``): the longest prefix naming a model."""
    parts = target.split("/")
    for n in range(len(parts), 0, -1):
        name = "/".join(parts[:n])
        if name and services.router.resolve(name) is not None:
            return name, upstream_path("/".join(parts[n:]))
    return None


_ANY = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


async def upstream(target: str, request: Request) -> Response:
    """Any request to a model's own llama-server, body and query untouched (the model starts if needed)."""
    services = services_of(request)
    split = _split_target(services, target)
    if split is None:
        await services.library.ascan()  # a file dropped into MODELS_DIR since the last scan
        split = _split_target(services, target)
    if split is None:
        first = target.split("/", 1)[0]
        raise ProxyError(404, f"model '{first}' not found (use /upstream/MODEL/PATH)")
    model, path = split
    body = cached_body(request.scope)
    if body is None:
        body = await request.body()
    lease = await lease_for(services, model)
    return await services.relay.forward(
        lease, request.method, path, content=body or None, headers=forward_headers(request.headers),
        params=request.query_params.multi_items() if request.scope.get("query_string") else None,
    )  # fmt: skip


# One route per method, so the OpenAPI schema names each operation once.
for _method in _ANY:
    router.add_api_route(
        "/upstream/{target:path}",
        upstream,
        methods=[_method],
        name=f"upstream_{_method.lower()}",
        include_in_schema=_method in ("GET", "POST"),
    )

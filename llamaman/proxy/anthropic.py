"""The Anthropic Messages surface: llama-server serves ``/v1/messages`` itself, so it is routed by
``model`` and passed through; errors before the hand-over come back in Anthropic's error shape."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llamaman.proxy.openai import pass_through

router = APIRouter(tags=["anthropic"])


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    return await pass_through(request, "/v1/messages", style="anthropic", sampling=True)


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    return await pass_through(request, "/v1/messages/count_tokens", style="anthropic")

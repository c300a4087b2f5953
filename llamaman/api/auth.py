"""/api/auth: the first admin, signing in and out, and who the caller is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, RedirectResponse, Response

from llamaman.api.deps import ServicesDep
from llamaman.auth import LoginThrottled, SetupClosed, safe_next, user_view

router = APIRouter(prefix="/api/auth", tags=["auth"])


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


def client_ip(request: Request) -> str:
    # uvicorn rewrites the client from X-Forwarded-For only for trusted proxies (--forwarded-allow-ips),
    # so a client cannot dodge the sign-in throttle by making up the header.
    return request.client.host if request.client else "unknown"


@router.post("/setup", status_code=201)
async def setup(body: Credentials, request: Request, services: ServicesDep) -> Response:
    """Create the first admin (only while no account exists) and sign in as it."""
    try:
        user = await services.auth.create_first_admin(body.username, body.password)
    except SetupClosed as exc:
        raise HTTPException(403, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    response = JSONResponse({"user": user_view(user)}, status_code=201)
    services.auth.set_session_cookie(response, request, user)
    return response


@router.post("/login")
async def login(body: Credentials, request: Request, services: ServicesDep) -> Response:
    try:
        user = await services.auth.verify_login(body.username, body.password, client_ip(request))
    except LoginThrottled as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    if user is None:
        raise HTTPException(401, "wrong username or password")
    response = JSONResponse({"user": user_view(user)})
    services.auth.set_session_cookie(response, request, user)
    return response


@router.get("/logout")
@router.post("/logout")
async def logout(request: Request, services: ServicesDep, next: str | None = Query(None)) -> Response:
    """Forget the session cookie; with ``?next=`` (a link in the UI) the browser goes on there."""
    response: Response = (
        RedirectResponse(safe_next(next), status_code=303) if next else JSONResponse({"signed_out": True})
    )
    services.auth.clear_session_cookie(response, request)
    return response


@router.get("/session", include_in_schema=False)
async def session(
    request: Request, services: ServicesDep, ticket: str = Query(""), next: str = Query("/")
) -> Response:
    """Turn a one-time ticket from a sign-in page into the session cookie, then go on to ``next``."""
    user = services.auth.redeem_ticket(ticket)
    if user is None:
        return RedirectResponse("/login", status_code=303)
    response = RedirectResponse(safe_next(next), status_code=303)
    services.auth.set_session_cookie(response, request, user)
    return response


@router.get("/me")
async def me(request: Request, services: ServicesDep) -> dict[str, Any]:
    identity = services.auth.identity_of(request)
    return {
        "identity": identity.to_dict() if identity else None,
        "require_auth": services.auth.require_auth,
    }

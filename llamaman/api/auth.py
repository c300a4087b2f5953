"""/api/auth: the first admin, signing in and out, who the caller is and changing one's password;
/api/users: the accounts (admins add, remove and change them; viewers may list them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, RedirectResponse, Response

from llamaman.api.deps import ServicesDep
from llamaman.auth.accounts import (
    MIN_PASSWORD,
    AccountError,
    AuthService,
    LoginThrottled,
    SetupClosed,
    user_view,
)
from llamaman.auth.sessions import SESSION_COOKIE, safe_next
from llamaman.core.identity import Identity, Role
from llamaman.gateway.dialects import rest_status, retry_headers

_auth = APIRouter(prefix="/api/auth", tags=["auth"])
_users = APIRouter(prefix="/api/users", tags=["users"])
router = APIRouter()


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class NewPassword(BaseModel):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


class NewUser(Credentials):
    role: Role = "viewer"


class UserChange(BaseModel):
    role: Role | None = None
    # An admin may set another account's password (ending its sessions), e.g. when it was forgotten.
    password: str | None = Field(default=None, min_length=MIN_PASSWORD, max_length=1024)


def client_ip(request: Request) -> str:
    # The peer's address; forwarded headers count only from proxies in LLAMAMAN_TRUSTED_PROXIES, so a
    # client cannot dodge the sign-in throttle by making up an address per try.
    return request.app.state.services.auth.client_address(request)


def _throttled(exc: LoginThrottled) -> HTTPException:
    return HTTPException(rest_status(exc), str(exc), headers=retry_headers(exc))


def _account_error(exc: AccountError | ValueError) -> HTTPException:
    return HTTPException(rest_status(exc) if isinstance(exc, AccountError) else 422, str(exc))


@_auth.post("/setup", status_code=201)
async def setup(body: Credentials, request: Request, services: ServicesDep) -> Response:
    """Create the first admin (only while no account exists) and sign in as it."""
    try:
        user = await services.auth.create_first_admin(body.username, body.password)
    except SetupClosed as exc:
        raise HTTPException(rest_status(exc), str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    response = JSONResponse({"user": user_view(user)}, status_code=201)
    await services.auth.set_session_cookie(response, request, user)
    return response


@_auth.post("/login")
async def login(body: Credentials, request: Request, services: ServicesDep) -> Response:
    try:
        user = await services.auth.verify_login(body.username, body.password, client_ip(request))
    except LoginThrottled as exc:
        raise _throttled(exc) from None
    if user is None:
        raise HTTPException(401, "wrong username or password")
    response = JSONResponse({"user": user_view(user)})
    await services.auth.set_session_cookie(response, request, user)
    return response


@_auth.get("/logout")
@_auth.post("/logout")
async def logout(request: Request, services: ServicesDep, next: str | None = Query(None)) -> Response:
    """End the session and forget its cookie; with ``?next=`` (a link in the UI) the browser goes on
    there. A link on another site signs nobody out."""
    response: Response = (
        RedirectResponse(safe_next(next), status_code=303) if next else JSONResponse({"signed_out": True})
    )
    if request.headers.get("sec-fetch-site", "same-origin").lower() not in ("same-origin", "none"):
        return response
    await services.auth.end_session(request.cookies.get(SESSION_COOKIE))
    services.auth.clear_session_cookie(response, request)
    return response


@_auth.get("/session", include_in_schema=False)
async def session(
    request: Request, services: ServicesDep, ticket: str = Query(""), next: str = Query("/")
) -> Response:
    """Turn a one-time ticket from a sign-in page into the session cookie, then go on to ``next``."""
    user = services.auth.redeem_ticket(ticket)
    if user is None:
        return RedirectResponse("/login", status_code=303)
    response = RedirectResponse(safe_next(next), status_code=303)
    await services.auth.set_session_cookie(response, request, user)
    return response


@_auth.get("/me")
async def me(request: Request, services: ServicesDep) -> dict[str, Any]:
    identity = services.auth.identity_of(request)
    return {
        "identity": identity.to_dict() if identity else None,
        "require_auth": services.auth.require_auth,
    }


def _signed_in_user(request: Request, auth: AuthService) -> str:
    identity = auth.identity_of(request)
    if identity is None or identity.kind != "user" or identity.user is None:
        raise HTTPException(403, "only a signed-in account has a password to change (API keys have none)")
    return identity.user


@_auth.post("/password")
async def change_password(body: NewPassword, request: Request, services: ServicesDep) -> Response:
    """Change the signed-in account's password. Every session of the account ends, this one
    included; the answer carries a new session cookie for this browser."""
    auth = services.auth
    username = _signed_in_user(request, auth)
    try:
        user = await auth.change_password(username, body.current_password, body.new_password)
    except LoginThrottled as exc:
        raise _throttled(exc) from None
    except (AccountError, ValueError) as exc:
        raise _account_error(exc) from None
    response = JSONResponse({"user": user_view(user), "changed": True})
    await auth.set_session_cookie(response, request, user)
    return response


def _admin(request: Request, auth: AuthService) -> Identity:
    """Account changes are for admins and unrestricted keys (the middleware already refuses
    viewers' and restricted keys' changes; this says so again where it matters most)."""
    identity = auth.identity_of(request)
    if identity is None or identity.read_only or identity.restricted:
        raise HTTPException(403, "only an admin can change accounts")
    return identity


@_users.get("")
async def list_users(services: ServicesDep) -> list[dict[str, Any]]:
    return [user_view(u) for u in services.auth.users()]


@_users.post("", status_code=201)
async def add_user(body: NewUser, request: Request, services: ServicesDep) -> dict[str, Any]:
    """Add an account: ``{"username", "password", "role": "admin" | "viewer"}``."""
    _admin(request, services.auth)
    try:
        user = await services.auth.create_user(body.username, body.password, body.role)
    except (AccountError, ValueError) as exc:
        raise _account_error(exc) from None
    return user_view(user)


@_users.patch("/{username}")
async def change_user(
    username: str, body: UserChange, request: Request, services: ServicesDep
) -> dict[str, Any]:
    """Change an account's role and/or set its password (which ends its sessions)."""
    _admin(request, services.auth)
    auth = services.auth
    if auth.user_by_name(username) is None:
        raise HTTPException(404, f"no account named '{username}'")
    try:
        # The role first: it is the change that may be refused, and nothing is half done then.
        if body.role is not None:
            await auth.set_role(username, body.role)
        if body.password is not None:
            await auth.change_password(username, None, body.password)
    except (AccountError, ValueError) as exc:
        raise _account_error(exc) from None
    user = auth.user_by_name(username)
    assert user is not None
    return user_view(user)


@_users.delete("/{username}")
async def remove_user(username: str, request: Request, services: ServicesDep) -> dict[str, Any]:
    """Remove an account; its sessions end at once. The last admin cannot be removed."""
    _admin(request, services.auth)
    try:
        await services.auth.remove_user(username)
    except AccountError as exc:
        raise _account_error(exc) from None
    return {"removed": username}


router.include_router(_auth)
router.include_router(_users)

"""First-admin setup and sign-in pages.

A page handler talks over a websocket and cannot set a cookie, so after a successful check the
browser is sent to the auth service's one-time session URL, which sets the cookie and comes back.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse
from nicegui import ui

from components.frame import apply_theme
from llamaman.services import Services
from pages.shell import Shell, fail


def _card(title: str, subtitle: str) -> ui.card:
    apply_theme()
    with ui.column().classes("w-full items-center q-mt-xl"):
        card = ui.card().props("bordered").classes("w-96 max-w-full q-pa-lg gap-3")
        with card:
            with ui.row().classes("items-center gap-1"):
                ui.icon("pets", size="1.8rem", color="primary")
                ui.label("LlamaMan").classes("text-h5 text-weight-bold")
            ui.label(title).classes("text-h6")
            ui.label(subtitle).classes("text-sm opacity-75")
    return card


def register(services: Services, shell: Shell) -> None:
    @ui.page("/setup")
    async def setup_page(request: Request) -> Any:
        auth = services.auth
        if not auth.needs_setup():
            return RedirectResponse("/login", status_code=303)
        with _card("Create the first admin", "This account manages LlamaMan. You can add API keys later."):
            username = ui.input("Username").props("outlined dense autofocus").classes("w-full")
            password = (
                ui.input("Password", password=True, password_toggle_button=True)
                .props("outlined dense")
                .classes("w-full")
            )
            again = ui.input("Repeat password", password=True).props("outlined dense").classes("w-full")
            error = ui.label("").classes("text-sm text-negative")

            async def create() -> None:
                error.text = ""
                if password.value != again.value:
                    error.text = "The passwords differ."
                    fail(error.text)
                    return
                try:
                    user = await auth.create_first_admin(username.value or "", password.value or "")
                except Exception as exc:  # ValueError (bad input) or SetupClosed (someone was faster)
                    error.text = str(exc)
                    fail(f"Setup failed: {exc}")
                    return
                ui.navigate.to(auth.session_url(user, next="/"))

            again.on("keydown.enter", create)
            ui.button("Create admin", on_click=create).classes("w-full").mark("create-admin")
        return None

    @ui.page("/login")
    async def login_page(request: Request, next: str = "/") -> Any:
        auth = services.auth
        if auth.needs_setup():
            return RedirectResponse("/setup", status_code=303)
        ip = auth.client_address(request)
        with _card("Sign in", "Use your LlamaMan account."):
            username = ui.input("Username").props("outlined dense autofocus").classes("w-full")
            password = (
                ui.input("Password", password=True, password_toggle_button=True)
                .props("outlined dense")
                .classes("w-full")
            )
            error = ui.label("").classes("text-sm text-negative")

            async def sign_in() -> None:
                error.text = ""
                try:
                    user = await auth.verify_login(username.value or "", password.value or "", ip)
                except Exception as exc:  # LoginThrottled says how long to wait
                    error.text = str(exc)
                    fail(str(exc))
                    return
                if user is None:
                    error.text = "Wrong username or password."
                    fail(error.text)
                    return
                ui.navigate.to(auth.session_url(user, next=next))

            password.on("keydown.enter", sign_in)
            ui.button("Sign in", on_click=sign_in).classes("w-full").mark("sign-in")
        return None

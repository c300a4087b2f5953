"""First-admin setup and sign-in pages.

A page handler talks over a websocket and cannot set a cookie, so after a successful check the
browser is sent to the auth service's one-time session URL, which sets the cookie and comes back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse
from nicegui import ui

from components.a11y import heading
from components.frame import apply_theme
from llamaman.services import Services
from pages.shell import Shell, fail


@contextmanager
def _card(title: str, subtitle: str) -> Iterator[ui.element]:
    """A centred card holding a real ``<form>``: password managers recognise it, and Enter in a field
    clicks its submit button (the browser's implicit submission), whose handler does the work."""
    apply_theme()
    ui.page_title(f"{title} · LlamaMan")
    with ui.column().classes("w-full items-center q-mt-xl q-px-sm"):
        card = ui.card().props("bordered").classes("w-96 max-w-full q-pa-lg gap-3")
        with card:
            with ui.row().classes("items-center gap-1"):
                ui.icon("pets", size="1.8rem", color="primary").props('aria-hidden="true"')
                ui.label("LlamaMan").classes("text-h5 text-weight-bold")
            heading(title, 1)
            ui.label(subtitle).classes("text-sm opacity-75")
            form = ui.element("form").classes("w-full column gap-3")
            form.on("submit", js_handler="(e) => e.preventDefault()")  # the click handler submits
            with form:
                yield form


def register(services: Services, shell: Shell) -> None:
    @ui.page("/setup")
    async def setup_page(request: Request) -> Any:
        auth = services.auth
        if not auth.needs_setup():
            return RedirectResponse("/login", status_code=303)
        with _card("Create the first admin", "This account manages LlamaMan. You can add API keys later."):
            username = (
                ui.input("Username")
                .props('outlined dense autofocus autocomplete="username"')
                .classes("w-full")
            )
            password = (
                ui.input("Password", password=True, password_toggle_button=True)
                .props('outlined dense autocomplete="new-password"')
                .classes("w-full")
            )
            again = (
                ui.input("Repeat password", password=True)
                .props('outlined dense autocomplete="new-password"')
                .classes("w-full")
            )
            error = ui.label("").classes("text-sm text-negative").props('role="alert"')

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

            create_btn = ui.button("Create admin", on_click=create).props("type=submit")
            create_btn.classes("w-full").mark("create-admin")
        return None

    @ui.page("/login")
    async def login_page(request: Request, next: str = "/") -> Any:
        auth = services.auth
        if auth.needs_setup():
            return RedirectResponse("/setup", status_code=303)
        ip = auth.client_address(request)
        with _card("Sign in", "Use your LlamaMan account."):
            username = (
                ui.input("Username")
                .props('outlined dense autofocus autocomplete="username" name="username"')
                .classes("w-full")
            )
            password = (
                ui.input("Password", password=True, password_toggle_button=True)
                .props('outlined dense autocomplete="current-password" name="password"')
                .classes("w-full")
            )
            error = ui.label("").classes("text-sm text-negative").props('role="alert"')

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

            # type=submit: the form's submit handler runs (for a click and for Enter alike).
            ui.button("Sign in", on_click=sign_in).props("type=submit").classes("w-full").mark("sign-in")
        return None

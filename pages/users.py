"""The settings page's account cards: "Your account" (change the password) and "Users" (admins add
and remove accounts and change roles; viewers see the list). Built on the auth service, like the
REST routes under /api/users."""

from __future__ import annotations

import time
from typing import Any

from nicegui import ui

from components.a11y import named
from components.dialogs import confirm
from llamaman.auth.accounts import AccountError, AuthService, LoginThrottled, role_of
from llamaman.core.identity import ROLES, Identity
from pages.shell import VIEWER_REFUSAL, fail


def _password(label: str, marker: str, autocomplete: str = "new-password") -> ui.input:
    field = ui.input(label, password=True, password_toggle_button=True).props("outlined dense")
    field.props["autocomplete"] = autocomplete  # lets password managers fill and save it
    return field.classes("w-full").mark(marker)


class AccountCard:
    """The signed-in user's own account: its name, role and a password change."""

    def __init__(self, auth: AuthService, identity: Identity) -> None:
        self.auth = auth
        self.username = identity.user or identity.name
        with ui.card().props("flat bordered").classes("w-full q-pa-md gap-2"):
            ui.label("Your account").classes("text-h6")
            with ui.row().classes("items-center gap-3"):
                ui.label(self.username).classes("text-weight-medium")
                ui.badge(identity.role or "", color="primary" if identity.role == "admin" else "grey")
                ui.space()
                ui.button("Change password", icon="password", on_click=self.open).props("flat").mark(
                    "change-password"
                )

    def open(self) -> None:
        with ui.dialog() as dialog, ui.card().classes("min-w-80 gap-2"):
            ui.label("Change your password").classes("text-h6")
            ui.label("Every browser signed in as you is signed out; this one stays.").classes(
                "text-sm opacity-75"
            )
            # A real form: password managers offer to save the new password, and Enter submits
            # (the browser clicks the submit button, whose handler saves).
            form = ui.element("form").classes("w-full column gap-2")
            form.on("submit", js_handler="(e) => e.preventDefault()")
            with form:
                ui.input(value=self.username).props(
                    "autocomplete=username readonly aria-hidden=true"
                ).classes("hidden")
                current = _password("Current password", "current-password", "current-password")
                new = _password("New password", "new-password")
                again = _password("Repeat the new password", "repeat-password")
                error = ui.label("").classes("text-sm text-negative").props("role=alert")
                with ui.row().classes("w-full justify-end"):
                    ui.button("Cancel", on_click=dialog.close).props("flat")
                    ui.button("Change", on_click=lambda: save()).props("type=submit").mark("save-password")

            async def save() -> None:
                error.text = ""
                if new.value != again.value:
                    error.text = "The new passwords differ."
                    return
                try:
                    user = await self.auth.change_password(
                        self.username, current.value or "", new.value or ""
                    )
                except (AccountError, ValueError, LoginThrottled) as exc:
                    error.text = str(exc)
                    fail(exc)
                    return
                dialog.close()
                ui.notify("Password changed", type="positive")
                # This page's session ended with the others: a fresh one comes with the sign-in ticket.
                ui.navigate.to(self.auth.session_url(user, next="/settings"))

        dialog.on("hide", dialog.delete)
        dialog.open()


class UsersCard:
    """Every account; admins add, remove and change them (the last admin stays)."""

    def __init__(self, auth: AuthService, identity: Identity) -> None:
        self.auth = auth
        self.me = identity.user or identity.name
        self.admin = identity.role == "admin"
        with ui.card().props("flat bordered").classes("w-full q-pa-md gap-2"):
            with ui.row().classes("w-full items-center"):
                ui.label("Users").classes("text-h6")
                ui.label("Admins change things; viewers only look.").classes("text-sm opacity-75")
                ui.space()
                if self.admin:
                    ui.button("Add user", icon="person_add", on_click=self.add).props("flat").mark("add-user")
            self.rows = ui.column().classes("w-full gap-1")
        self.refresh()

    def refresh(self) -> None:
        self.rows.clear()
        with self.rows:
            for user in self.auth.users():
                self._row(user.username, role_of(user), user.created_at)

    def _row(self, name: str, role: str, created: float) -> None:
        with ui.row().classes("w-full items-center gap-3 no-wrap").mark(f"user-{name}"):
            ui.icon("account_circle").classes("opacity-70")
            ui.label(name + (" (you)" if name == self.me else "")).classes("text-weight-medium")
            ui.label(time.strftime("since %Y-%m-%d", time.localtime(created))).classes("text-xs opacity-60")
            ui.space()
            if not self.admin:
                ui.badge(role, color="primary" if role == "admin" else "grey")
                return

            async def set_role(e: Any, name: str = name) -> None:
                await self._guarded(self.auth.set_role(name, e.value), f"{name} is now {e.value}")

            role_select = ui.select(list(ROLES), value=role, on_change=set_role)
            role_select.props("dense outlined").classes("w-28").mark(f"role-{name}")
            role_select.props["aria-label"] = f"Role of {name}"
            remove = ui.button(icon="delete", on_click=lambda name=name: self.remove(name))
            named(remove.props("flat round dense color=negative").mark(f"remove-{name}"), f"Remove {name}")

    async def _guarded(self, change: Any, done: str) -> None:
        try:
            await change
        except (AccountError, ValueError) as exc:
            fail(exc)
        else:
            ui.notify(done, type="positive")
        self.refresh()

    def remove(self, name: str) -> None:
        lines = [f"'{name}' is signed out everywhere at once."]
        confirm(
            f"Remove {name}?",
            lines,
            "Remove",
            lambda: self._guarded(self.auth.remove_user(name), f"{name} removed"),
        )

    def add(self) -> None:
        if not self.admin:
            fail(VIEWER_REFUSAL)
            return
        with ui.dialog() as dialog, ui.card().classes("min-w-80 gap-2"):
            ui.label("Add a user").classes("text-h6")
            name = ui.input("Username").props("outlined dense").classes("w-full").mark("new-username")
            password = _password("Password", "new-user-password")
            role = (
                ui.select(list(ROLES), value="viewer", label="Role").props("outlined dense").classes("w-full")
            )
            role.mark("new-user-role")
            error = ui.label("").classes("text-sm text-negative")

            async def create() -> None:
                try:
                    user = await self.auth.create_user(name.value or "", password.value or "", role.value)
                except (AccountError, ValueError) as exc:
                    error.text = str(exc)
                    fail(exc)
                    return
                dialog.close()
                ui.notify(f"{user.username} added as {role_of(user)}", type="positive")
                self.refresh()

            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=dialog.close).props("flat")
                ui.button("Add", on_click=create).mark("create-user")
        dialog.on("hide", dialog.delete)
        dialog.open()

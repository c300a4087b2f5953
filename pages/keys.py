"""API keys: create (the secret is shown once, with a copy button), list with usage, revoke.

A key is an inference key (model endpoints only) unless admin is chosen; it may expire after some
days and have a daily token quota."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import ui

from components import fmt
from components.a11y import named
from components.connection import ConnectionPanel, Endpoint
from components.data_table import table
from components.dialogs import confirm
from llamaman.services import Services
from pages.shell import Shell, client_endpoint, fail

COLUMNS = [
    ("name", "Name"), ("prefix_shown", "Key"), ("scope", "Scope"), ("models", "Models"),
    ("rpm", "Requests/min"), ("quota", "Tokens today / quota"), ("requests", "Requests"),
    ("tokens", "Tokens"), ("created", "Created"), ("last_used", "Last used"), ("expires", "Expires"),
    ("state", "State"),
]  # fmt: skip
SCOPES = {"inference": "Inference: model endpoints only", "admin": "Admin: manages LlamaMan too"}
DAY = 86400.0


def _state(k: dict[str, Any]) -> str:
    if k.get("revoked"):
        return "revoked"
    if k.get("expired"):
        return "expired"
    return "environment" if k.get("source") == "env" else "active"


def _row(k: dict[str, Any]) -> dict[str, Any]:
    usage = k.get("usage") or {}
    return {
        **k,
        "prefix_shown": f"{k['prefix']}…",
        "scope": k.get("scope") or "inference",
        "models": ", ".join(k.get("allowed_models") or []) or "all",
        "rpm": k.get("rpm_limit") or "no limit",
        "quota": f"{fmt.count(k.get('tokens_today') or 0)} / "
        + (fmt.count(k["daily_token_quota"]) if k.get("daily_token_quota") else "no limit"),
        "expires": fmt.clock(k["expires_at"]) if k.get("expires_at") else "never",
        "requests": usage.get("requests", 0),
        "tokens": fmt.count(usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)),
        "created": fmt.clock(k.get("created_at")),
        "last_used": fmt.ago(k.get("last_used_at")),
        "state": _state(k),
    }


class KeysPanel:
    def __init__(self, services: Services, auth: Any, endpoint: Callable[[str], Endpoint]) -> None:
        self.services = services
        self.keys = auth.keys
        self.endpoint = endpoint
        with ui.card().props("flat bordered").classes("w-full q-pa-md gap-2"):
            ui.label("New API key").classes("text-h6")
            with ui.row().classes("w-full items-start gap-3"):
                self.name = (
                    ui.input("Name", placeholder="e.g. open-webui")
                    .props("outlined dense")
                    .classes("grow basis-48")
                    .mark("key-name")
                )
                self.name.on("keydown.enter", self.create)  # Enter creates, as in any form
                models = sorted({m.name for m in services.library.models})
                # Entries are glob patterns (e.g. "qwen*"): typed ones are kept as they are.
                self.models = ui.select(
                    models,
                    multiple=True,
                    label="Limit to models (names or globs; none = all)",
                    with_input=True,
                    new_value_mode="add-unique",
                )
                self.models.props("outlined dense use-chips").classes("grow basis-64")
                self.rpm = (
                    ui.number("Requests per minute", value=0, min=0, step=1)
                    .props('outlined dense hint="0 = no limit"')
                    .classes("w-44")
                )
            with ui.row().classes("w-full items-start gap-3"):
                self.scope = (
                    ui.select(SCOPES, value="inference", label="Scope")
                    .props("outlined dense")
                    .classes("w-72")
                    .mark("key-scope")
                )
                self.days = (
                    ui.number("Expires after (days)", value=0, min=0, step=1)
                    .props('outlined dense hint="0 = never"')
                    .classes("w-44")
                    .mark("key-days")
                )
                self.quota = (
                    ui.number("Tokens per day", value=0, min=0, step=1000)
                    .props('outlined dense hint="prompt + completion, UTC day; 0 = no limit"')
                    .classes("w-52")
                    .mark("key-quota")
                )
                ui.button("Create", icon="add", on_click=self.create).mark("key-create")
        with ui.row().classes("w-full items-center"):
            ui.label("Keys").classes("text-h6")
            ui.label(
                "Clients send a key as 'Authorization: Bearer <key>' (or x-api-key). "
                "Model endpoints need one while require-auth is on (Settings). "
                "Give clients such as Open WebUI an inference key; only admin keys manage LlamaMan."
            ).classes("text-sm opacity-75")
        self.table = table(COLUMNS, [])
        self.table.add_slot(
            "body-cell-state",
            r"""
            <q-td :props="props">
              <q-badge :label="props.value"
                       :color="{active: 'positive', revoked: 'grey', expired: 'orange'}[props.value]
                               || 'blue-grey'" />
              <q-btn v-if="props.value == 'active' || props.value == 'expired'" flat dense round size="sm"
                     icon="tune" aria-label="Change limits" @click="() => $parent.$emit('limits', props.row)">
                <q-tooltip>Change limits</q-tooltip></q-btn>
              <q-btn v-if="props.value == 'active'" flat dense round size="sm" icon="block" color="negative"
                     aria-label="Revoke" @click="() => $parent.$emit('revoke', props.row)">
                <q-tooltip>Revoke</q-tooltip></q-btn>
            </q-td>
            """,
        )
        self.table.on("revoke", lambda e: self.confirm_revoke(e.args))
        self.table.on("limits", lambda e: self.edit_limits(e.args))

    async def refresh(self) -> None:
        try:
            listing = await self.keys.listing()
        except Exception as exc:
            fail(f"Could not list the keys: {exc}")
            return
        self.table.rows = [_row(k) for k in reversed(listing)]

    async def create(self) -> None:
        name = (self.name.value or "").strip()
        if not name:
            fail("Give the key a name")
            return
        days, quota, rpm = (float(w.value or 0) for w in (self.days, self.quota, self.rpm))
        if min(days, quota, rpm) < 0:
            fail("Days, tokens per day and requests per minute cannot be negative")
            return
        scope = "admin" if self.scope.value == "admin" else "inference"
        models = list(self.models.value or [])
        if scope == "admin" and models:
            fail("An admin key cannot be limited to some models: clear the models or make an inference key")
            return
        try:
            record, secret = await self.keys.create(
                name, models, int(rpm), scope=scope,
                expires_at=time.time() + days * DAY if days > 0 else None, daily_token_quota=int(quota),
            )  # fmt: skip
        except Exception as exc:
            fail(f"Could not create the key: {exc}")
            return
        self.name.value = ""
        self.show_once(record.name, secret)
        await self.refresh()

    def show_once(self, name: str, secret: str) -> None:
        with ui.dialog().props("persistent") as dialog, ui.card().classes("w-full max-w-3xl"):
            ui.label(f"API key '{name}'").classes("text-h6")
            ui.label("Copy it now: it is shown only this once and cannot be retrieved later.").classes(
                "text-sm text-warning"
            )
            with ui.row().classes("w-full no-wrap items-center gap-2"):
                ui.input("The new key", value=secret).props("outlined dense readonly").classes(
                    "grow lm-mono"
                ).mark("new-key")

                def copy() -> None:
                    ui.clipboard.write(secret)
                    ui.notify("Copied", type="positive")

                named(ui.button(icon="content_copy", on_click=copy).props("flat round"), "Copy the key")
            ConnectionPanel(self.endpoint(secret), note="Ready to paste, with this key filled in:")
            with ui.row().classes("w-full justify-end"):
                ui.button("Done", on_click=dialog.close)
        dialog.on("hide", dialog.delete)
        dialog.open()

    def edit_limits(self, row: dict[str, Any]) -> None:
        """Change a key's expiry, daily token quota and request rate (its secret and scope stay)."""
        expires = row.get("expires_at")
        days_left = max(0.0, round((expires - time.time()) / DAY, 2)) if expires else 0.0
        with ui.dialog() as dialog, ui.card().classes("min-w-96"):
            ui.label(f"Limits of '{row['name']}'").classes("text-h6")
            days = (
                ui.number("Expires after (days from now)", value=days_left, min=0)
                .props('outlined dense hint="0 = never"')
                .mark("limits-days")
            )
            quota = (
                ui.number("Tokens per day", value=row.get("daily_token_quota") or 0, min=0, step=1000)
                .props('outlined dense hint="0 = no limit"')
                .mark("limits-quota")
            )
            rpm = (
                ui.number("Requests per minute", value=row.get("rpm_limit") or 0, min=0, step=1)
                .props('outlined dense hint="0 = no limit"')
                .mark("limits-rpm")
            )

            async def save() -> None:
                values = [float(w.value or 0) for w in (days, quota, rpm)]
                if min(values) < 0:
                    fail("Limits cannot be negative")
                    return
                changes: dict[str, Any] = {"daily_token_quota": int(values[1]), "rpm_limit": int(values[2])}
                if values[0] != days_left:  # untouched: the expiry stays exactly as it was
                    changes["expires_at"] = time.time() + values[0] * DAY if values[0] > 0 else None
                try:
                    await self.keys.update(row["id"], changes)
                except Exception as exc:
                    fail(f"Could not change the limits: {exc}")
                    return
                dialog.close()
                ui.notify(f"Changed the limits of {row['name']}", type="positive")
                await self.refresh()

            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=dialog.close).props("flat")
                ui.button("Save", on_click=save).mark("limits-save")
        dialog.on("hide", dialog.delete)
        dialog.open()

    def confirm_revoke(self, row: dict[str, Any]) -> None:
        async def revoke() -> None:
            try:
                await self.keys.revoke(row["id"])
            except Exception as exc:
                fail(f"Could not revoke: {exc}")
                return
            ui.notify(f"Revoked {row['name']}", type="positive")
            await self.refresh()

        confirm(
            f"Revoke '{row['name']}'?",
            ["Clients using it are refused from now on. This cannot be undone."],
            "Revoke",
            revoke,
        )


def register(services: Services, shell: Shell) -> None:
    @ui.page("/keys")
    async def keys_page(request: Request) -> Response | None:
        user, redirect = shell.guard(request)
        if redirect is not None:
            return redirect
        with shell.frame("/keys", user=user):
            panel = KeysPanel(services, services.auth, lambda key: client_endpoint(services, request, key))
            await panel.refresh()
        return None

"""The playground: chat with any model through the router and relay (the same path the proxy takes,
so the model is started or swapped in on demand), streaming the answer token by token."""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import ui

from components import fmt
from components.chat import SamplingPanel, Transcript
from llamaman.services import Services
from llamaman.upstream.chat import ChatStream
from pages.shell import Shell, fail


class Playground:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.history: list[dict[str, str]] = []
        self.busy = False
        self.stop_requested = False
        chat_models = [
            m for m in services.library.models if m.launchable and not (m.info and m.info.is_embedding)
        ]
        options = {m.rel_path: m.name for m in chat_models}
        running = [m.record.model_path for m in services.supervisor.list() if m.state.value == "healthy"]
        first = next((p for p in running if p in options), next(iter(options), None))
        with ui.row().classes("w-full no-wrap items-stretch gap-3").style("min-height: calc(100vh - 150px)"):
            with ui.card().props("flat bordered").classes("w-72 shrink-0 q-pa-sm gap-2"):
                self.model = (
                    ui.select(options, value=first, label="Model", with_input=True)
                    .props("outlined dense options-dense")
                    .classes("w-full")
                    .mark("playground-model")
                )
                self.system = ui.textarea("System prompt").props("outlined dense autogrow").classes("w-full")
                ui.label("Sampling").classes("text-subtitle2 q-mt-sm")
                self.sampling = SamplingPanel()
                with ui.row().classes("w-full justify-between q-mt-sm"):
                    ui.button("Defaults", on_click=self.sampling.reset).props("flat dense no-caps")
                    ui.button("New chat", icon="restart_alt", on_click=self.clear).props("flat dense no-caps")
            with ui.column().classes("grow min-w-0 gap-2"):
                self.transcript = Transcript()
                self.stats = ui.label("").classes("text-xs opacity-75 lm-mono").mark("playground-stats")
                with ui.row().classes("w-full no-wrap items-end gap-2"):
                    self.prompt = ui.textarea(
                        placeholder="Message (Enter sends, Shift+Enter breaks the line)"
                    )
                    self.prompt.props("outlined dense autogrow").classes("grow").mark("playground-prompt")
                    self.prompt.on("keydown.enter.exact.prevent", self.send)
                    self.send_btn = ui.button(icon="send", on_click=self.send).mark("playground-send")
                    self.stop_btn = ui.button(icon="stop", on_click=self.stop).props("color=negative")
                    self.stop_btn.visible = False

    def clear(self) -> None:
        if self.busy:
            fail("Wait for the answer (or stop it) first")
            return
        self.history.clear()
        self.transcript.clear()
        self.stats.text = ""

    def stop(self) -> None:
        self.stop_requested = True

    def _busy(self, busy: bool) -> None:
        self.busy = busy
        self.send_btn.visible = not busy
        self.stop_btn.visible = busy

    async def send(self) -> None:
        text = (self.prompt.value or "").strip()
        if self.busy or not text:
            return
        model = self.model.value
        if not model:
            fail("Choose a model first")
            return
        entry = self.services.library.find(model)
        name = entry.name if entry else model
        self.prompt.value = ""
        self.history.append({"role": "user", "content": text})
        self.transcript.user(text)
        messages = (
            [{"role": "system", "content": self.system.value}] if self.system.value else []
        ) + self.history
        body = {"model": name, "messages": messages, "stream": True, **self.sampling.values()}
        self._busy(True)
        self.stop_requested = False
        self.transcript.start_reply(name)
        try:
            reply, stats = await self._stream(model, body)
        except Exception as exc:
            self.transcript.append("")
            self.transcript.note(f"error: {exc}", negative=True)
            fail(f"Chat failed: {exc}")
            self.history.pop()
            return
        finally:
            self._busy(False)
        self.history.append({"role": "assistant", "content": reply})
        self.stats.text = stats

    async def _stream(self, model: str, body: dict[str, Any]) -> tuple[str, str]:
        self.stats.text = "loading the model…" if not self._healthy(model) else "waiting for the first token…"
        chat = ChatStream(self.services.router, self.services.relay, model, body)
        started = False
        # aclosing: stopping early must release the model at once, not when the generator is collected.
        async with contextlib.aclosing(chat.pieces()) as pieces:
            async for piece in pieces:
                if not started:
                    started = True
                    self.stats.text = "streaming…"
                self.transcript.append(piece)
                if self.stop_requested:
                    self.transcript.note("stopped")
                    break
        r = chat.result
        ttft = f"{r.ttft_ms:.0f} ms" if r.ttft_ms is not None else fmt.DASH
        speed = f"{r.tokens_per_s:.1f} tok/s" if r.tokens_per_s else fmt.DASH
        return self.transcript.current_text, f"{r.tokens} tokens · TTFT {ttft} · {speed} · {r.seconds:.1f} s"

    def _healthy(self, rel_path: str) -> bool:
        return any(
            m.record.model_path == rel_path and m.state.value == "healthy"
            for m in self.services.supervisor.list()
        )


def register(services: Services, shell: Shell) -> None:
    @ui.page("/playground")
    async def playground_page(request: Request) -> Response | None:
        user, redirect = shell.guard(request)
        if redirect is not None:
            return redirect
        with shell.frame("/playground", user=user):
            Playground(services)
        return None

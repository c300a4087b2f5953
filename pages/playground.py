"""The playground: chat with any model through the router and relay (the same path the proxy takes,
so the model is started or swapped in on demand), streaming the answer token by token."""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import ui

from components import fmt
from components.a11y import named
from components.chat import SamplingPanel, Transcript
from llamaman.services import Services
from llamaman.upstream.chat import ChatStream
from pages.shell import Shell, fail

MODES = {"chat": "Chat", "raw": "Raw completion"}


class Playground:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.history: list[dict[str, str]] = []
        self.last_prompt = ""
        self.busy = False
        self.stop_requested = False
        chat_models = [
            m for m in services.library.models if m.launchable and not (m.info and m.info.is_embedding)
        ]
        options = {m.rel_path: m.name for m in chat_models}
        running = [m.record.model_path for m in services.supervisor.list() if m.state.value == "healthy"]
        first = next((p for p in running if p in options), next(iter(options), None))
        # A column on phones (settings folded above the chat), a sidebar beside the chat from md up.
        with ui.element("div").classes("w-full flex flex-col md:flex-row md:flex-nowrap items-stretch gap-3"):
            with ui.card().props("flat bordered").classes("w-full md:w-72 shrink-0 q-pa-sm gap-2"):
                self.model = (
                    ui.select(options, value=first, label="Model", with_input=True)
                    .props("outlined dense options-dense")
                    .classes("w-full")
                    .mark("playground-model")
                )
                self.template = ui.label("").classes("text-xs").mark("chat-template")
                self.mode = ui.toggle(MODES, value="chat").props("dense no-caps").mark("playground-mode")
                self.mode_hint = ui.label("").classes("text-xs opacity-75")
                with (
                    ui.expansion("Prompt and sampling", icon="tune")
                    .classes("w-full")
                    .props("dense") as self.settings_panel
                ):
                    self.system = (
                        ui.textarea("System prompt").props("outlined dense autogrow").classes("w-full")
                    )
                    ui.label("Sampling").classes("text-subtitle2 q-mt-sm")
                    self.sampling = SamplingPanel()
                    with ui.row().classes("w-full justify-between q-mt-sm"):
                        ui.button("Defaults", on_click=self.sampling.reset).props("flat dense no-caps")
                        ui.button("New chat", icon="restart_alt", on_click=self.clear).props(
                            "flat dense no-caps"
                        )
            with ui.column().classes("grow min-w-0 w-full gap-2"):
                with ui.row().classes("w-full items-center gap-2"):
                    ui.label("Show replies as").classes("text-xs opacity-75")
                    self.render_as = ui.toggle({"md": "Markdown", "text": "Text"}, value="md")
                    self.render_as.props("dense no-caps").mark("render-as")
                    self.render_as.on_value_change(lambda e: self.transcript.set_markdown(e.value == "md"))
                self.transcript = Transcript(on_regenerate=self.regenerate)
                self.stats = ui.label("").classes("text-xs opacity-75 lm-mono").mark("playground-stats")
                with ui.row().classes("w-full no-wrap items-end gap-2"):
                    self.prompt = ui.textarea(
                        placeholder="Message (Enter sends, Shift+Enter breaks the line)"
                    )
                    self.prompt.props('outlined dense autogrow aria-label="Message"').classes("grow")
                    self.prompt.mark("playground-prompt")
                    self.prompt.on("keydown.enter.exact.prevent", self.send)
                    self.send_btn = ui.button(icon="send", on_click=self.send).mark("playground-send")
                    named(self.send_btn, "Send")
                    self.stop_btn = ui.button(icon="stop", on_click=self.stop).props("color=negative")
                    named(self.stop_btn.mark("playground-stop"), "Stop the answer")
                    self.stop_btn.visible = False
        self.model.on_value_change(lambda e: self._model_chosen(e.value))
        self.mode.on_value_change(lambda e: self._explain_mode())
        self._model_chosen(first)
        ui.timer(0.1, self._open_settings_on_wide_screens, once=True)

    async def _open_settings_on_wide_screens(self) -> None:
        try:
            width = await ui.run_javascript("window.innerWidth", timeout=5)
        except Exception:  # no browser (yet): the panel stays folded, which works everywhere
            return
        self.settings_panel.value = bool(width and width >= 1024)

    def _model_chosen(self, rel_path: str | None) -> None:
        """Show whether the model has a chat template; without one, raw completion is the way."""
        entry = self.services.library.find(rel_path) if rel_path else None
        info = entry.info if entry else None
        if info is None:
            self.template.text = ""
        elif info.has_chat_template:
            self.template.text = "Chat template: built into the model"
            self.template.classes(remove="text-warning")
        else:
            self.template.text = "No chat template: raw completion chosen"
            self.template.classes("text-warning")
            self.mode.value = "raw"
        self._explain_mode()

    def _explain_mode(self) -> None:
        self.mode_hint.text = (
            "The prompt goes to /v1/completions as typed, without a chat template; "
            "each send is a new completion."
            if self.mode.value == "raw"
            else "Messages go through the model's chat template (/v1/chat/completions)."
        )

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
        self.prompt.value = ""
        await self._ask(text)

    async def regenerate(self) -> None:
        """Ask again for the newest reply (same prompt, same settings; a new sample)."""
        if self.busy or not self.last_prompt:
            return
        if self.history and self.history[-1]["role"] == "assistant":
            self.history.pop()
        if self.history and self.history[-1]["role"] == "user":
            self.history.pop()
        self.transcript.drop_last_reply()
        await self._ask(self.last_prompt, show=False)

    async def _ask(self, text: str, *, show: bool = True) -> None:
        model = self.model.value
        if not model:
            fail("Choose a model first")
            return
        entry = self.services.library.find(model)
        name = entry.name if entry else model
        raw = self.mode.value == "raw"
        self.last_prompt = text
        if show:
            self.transcript.user(text)
        sampling = self.sampling.values()
        if raw:
            system = f"{self.system.value}\n\n" if self.system.value else ""
            body: dict[str, Any] = {"prompt": system + text, "stream": True, **sampling}
        else:
            self.history.append({"role": "user", "content": text})
            messages = (
                [{"role": "system", "content": self.system.value}] if self.system.value else []
            ) + self.history
            body = {"model": name, "messages": messages, "stream": True, **sampling}
        self._busy(True)
        self.stop_requested = False
        self.transcript.start_reply(name)
        try:
            reply, stats = await self._stream(model, body, raw)
        except Exception as exc:
            self.transcript.append("")
            self.transcript.note(f"error: {exc}", negative=True)
            fail(f"Chat failed: {exc}")
            if not raw:
                self.history.pop()
            return
        finally:
            self._busy(False)
            self.transcript.finish()
        if not raw:
            self.history.append({"role": "assistant", "content": reply})
        self.stats.text = stats

    async def _stream(self, model: str, body: dict[str, Any], raw: bool = False) -> tuple[str, str]:
        self.stats.text = "loading the model…" if not self._healthy(model) else "waiting for the first token…"
        chat = ChatStream(self.services.router, self.services.relay, model, body, raw=raw)
        started = False
        # aclosing: stopping closes the upstream stream at once, and llama-server stops generating
        # when its client goes away; the model is released at the same moment.
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
        prompt_speed = f"{r.prompt_per_s:.1f} tok/s" if r.prompt_per_s else fmt.DASH
        return self.transcript.current_text, (
            f"prompt {r.prompt_tokens} tokens · {prompt_speed} · generated {r.tokens} tokens · {speed}"
            f" · TTFT {ttft} · {r.seconds:.1f} s"
        )

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

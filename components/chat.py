"""The playground's pieces: sampling controls and a chat transcript that grows as tokens stream in."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nicegui import ui

from components.a11y import named


@dataclass(frozen=True)
class Knob:
    name: str
    label: str
    minimum: float
    maximum: float
    step: float
    default: float
    tip: str


KNOBS = (
    Knob("temperature", "Temperature", 0, 2, 0.05, 0.8, "Randomness; 0 always picks the likeliest token"),
    Knob(
        "top_p",
        "Top-p",
        0,
        1,
        0.01,
        0.95,
        "Sample from the smallest set of tokens with this total probability",
    ),
    Knob("top_k", "Top-k", 0, 200, 1, 40, "Sample from the k likeliest tokens; 0 = all"),
    Knob("min_p", "Min-p", 0, 1, 0.01, 0.05, "Drop tokens less likely than this share of the likeliest"),
    Knob(
        "repeat_penalty", "Repeat penalty", 0.5, 2, 0.01, 1.0, "Above 1 discourages repeating recent tokens"
    ),
    Knob("max_tokens", "Max tokens", 1, 8192, 1, 512, "Stop after this many generated tokens"),
)


class SamplingPanel:
    def __init__(self) -> None:
        self.sliders: dict[str, ui.slider] = {}
        with ui.column().classes("w-full gap-0"):
            for k in KNOBS:
                with ui.row().classes("w-full items-center justify-between no-wrap"):
                    ui.label(k.label).classes("text-sm").tooltip(k.tip)
                    value = ui.label().classes("text-xs lm-mono")
                slider = ui.slider(min=k.minimum, max=k.maximum, step=k.step, value=k.default).props("dense")
                slider.props["aria-label"] = k.label
                value.bind_text_from(slider, "value", backward=lambda v: f"{v:g}")
                self.sliders[k.name] = slider
            self.seed = ui.number("Seed", value=-1, step=1).props('dense outlined hint="-1 = random"')
            self.seed.classes("w-full q-mt-sm")

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: s.value for k, s in self.sliders.items()}
        out["top_k"] = int(out["top_k"])
        out["max_tokens"] = int(out["max_tokens"])
        seed = self.seed.value
        if seed is not None and int(seed) >= 0:
            out["seed"] = int(seed)
        return out

    def reset(self) -> None:
        for k in KNOBS:
            self.sliders[k.name].value = k.default
        self.seed.value = -1


# Special tokens such as <|im_end|> or </s> look like HTML tags: Markdown rendering would hide them.
_TOKEN_TAG = re.compile(r"<(/?(?:\|[^<>|\s]*\||s|unk|pad|bos|eos))>")


def markdown_safe(text: str) -> str:
    """``text`` for the Markdown renderer with special tokens kept visible."""
    return _TOKEN_TAG.sub(r"&lt;\1&gt;", text)


class Reply:
    """One assistant message: Markdown or plain text, with copy and regenerate once it is done."""

    def __init__(self, model: str, markdown: bool, on_regenerate: Callable[[], Awaitable[None]]) -> None:
        self.text = ""
        self.markdown = markdown
        with ui.chat_message(name=model).props("bg-color=indigo-1 text-color=black") as self.box:
            self.box.classes("w-full").mark("reply")
            self.rich = ui.markdown("…").classes("lm-wrap")
            self.plain = ui.label("").classes("lm-mono text-sm").style("white-space: pre-wrap")
            with ui.row().classes("gap-1") as self.actions:
                named(
                    ui.button(icon="content_copy", on_click=self.copy).props("flat dense round size=sm"),
                    "Copy",
                )
                regen = ui.button(icon="refresh", on_click=on_regenerate).props("flat dense round size=sm")
                named(regen.mark("regenerate"), "Regenerate")
        self.actions.visible = False
        self.show(markdown)

    def show(self, markdown: bool) -> None:
        self.markdown = markdown
        self.rich.visible, self.plain.visible = markdown, not markdown
        self._render()

    def _render(self) -> None:
        if self.markdown:
            self.rich.content = markdown_safe(self.text) if self.text else "…"
        else:
            self.plain.text = self.text or "…"

    def append(self, piece: str) -> None:
        self.text += piece
        self._render()

    def done(self) -> None:
        self.actions.visible = True

    def copy(self) -> None:
        ui.clipboard.write(self.text)
        ui.notify("Copied", type="positive")


class Transcript:
    """Messages as chat bubbles; the last assistant bubble is extended while it streams."""

    def __init__(self, on_regenerate: Callable[[], Awaitable[None]] | None = None) -> None:
        self.on_regenerate = on_regenerate
        self.markdown = True
        self.area = ui.scroll_area().classes("w-full grow lm-soft rounded-borders").style("min-height: 18rem")
        with self.area:
            self.body = ui.column().classes("w-full gap-1 q-pa-sm")
            # Focusable, so the keyboard can scroll the conversation.
            self.body.props('tabindex=0 role=log aria-label="Conversation"')
            with self.body:
                self.hint = ui.label("Pick a model, type a message, press Enter.").classes(
                    "text-sm opacity-75"
                )
        self.replies: list[Reply] = []
        self.current: Reply | None = None
        self.current_text = ""

    def user(self, text: str) -> None:
        self.hint.visible = False
        with self.body:
            with (
                ui.chat_message(name="You", sent=True)
                .props("bg-color=grey-4 text-color=black")
                .classes("w-full")
            ):
                ui.label(text).style("white-space: pre-wrap")
        self.area.scroll_to(percent=1.0)

    def start_reply(self, model: str) -> None:
        async def regenerate() -> None:
            if self.on_regenerate is not None:
                await self.on_regenerate()

        with self.body:
            self.current = Reply(model, self.markdown, regenerate)
        self.replies.append(self.current)
        self.current_text = ""
        self.area.scroll_to(percent=1.0)

    def append(self, text: str) -> None:
        self.current_text += text
        if self.current is not None:
            self.current.append(text)
        self.area.scroll_to(percent=1.0)

    def finish(self) -> None:
        if self.current is not None:
            self.current.done()

    def drop_last_reply(self) -> None:
        """Remove the newest reply (and the notes after it), for regenerating it."""
        if not self.replies:
            return
        last = self.replies.pop()
        children = list(self.body.default_slot.children)
        if last.box in children:
            for child in children[children.index(last.box) :]:
                child.delete()
        self.current = None

    def set_markdown(self, markdown: bool) -> None:
        self.markdown = markdown
        for reply in self.replies:
            reply.show(markdown)

    def note(self, text: str, negative: bool = False) -> None:
        with self.body:
            ui.label(text).classes("text-xs " + ("text-negative" if negative else "opacity-75"))
        self.area.scroll_to(percent=1.0)

    def clear(self) -> None:
        self.body.clear()
        with self.body:
            self.hint = ui.label("New conversation.").classes("text-sm opacity-75")
        self.replies.clear()
        self.current = None
        self.current_text = ""

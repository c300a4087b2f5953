"""The playground's pieces: sampling controls and a chat transcript that grows as tokens stream in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nicegui import ui


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


class Transcript:
    """Messages as chat bubbles; the last assistant bubble is extended while it streams."""

    def __init__(self) -> None:
        self.area = ui.scroll_area().classes("w-full grow lm-soft rounded-borders").style("min-height: 18rem")
        with self.area:
            self.body = ui.column().classes("w-full gap-1 q-pa-sm")
            with self.body:
                self.hint = ui.label("Pick a model, type a message, press Enter.").classes(
                    "text-sm opacity-60"
                )
        self.current: ui.markdown | None = None
        self.current_text = ""

    def user(self, text: str) -> None:
        self.hint.visible = False
        with self.body:
            with ui.chat_message(name="You", sent=True).props("bg-color=grey-4").classes("w-full"):
                ui.label(text).style("white-space: pre-wrap")
        self.area.scroll_to(percent=1.0)

    def start_reply(self, model: str) -> None:
        with self.body:
            reply = ui.chat_message(name=model).props("bg-color=indigo-1 text-color=black")
            with reply.classes("w-full").mark("reply"):
                self.current = ui.markdown("…").classes("lm-wrap")
        self.current_text = ""
        self.area.scroll_to(percent=1.0)

    def append(self, text: str) -> None:
        self.current_text += text
        if self.current is not None:
            self.current.content = self.current_text
        self.area.scroll_to(percent=1.0)

    def note(self, text: str, negative: bool = False) -> None:
        with self.body:
            ui.label(text).classes("text-xs " + ("text-negative" if negative else "opacity-70"))
        self.area.scroll_to(percent=1.0)

    def clear(self) -> None:
        self.body.clear()
        with self.body:
            self.hint = ui.label("New conversation.").classes("text-sm opacity-60")
        self.current = None
        self.current_text = ""

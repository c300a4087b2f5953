"""How a client reaches the models: the proxy's Ollama and OpenAI base URLs as this browser sees them,
and snippets to copy (Open WebUI's environment, curl, the Python ``ollama`` and ``openai`` clients)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from nicegui import ui

from components.a11y import named

KEY_PLACEHOLDER = "YOUR-API-KEY"


@dataclass(frozen=True)
class Endpoint:
    base: str  # e.g. http://gpu-box:42069, the proxy as the browser reaches it
    model: str  # a model name for the examples
    key: str | None = None  # a real key (right after creating it), else a placeholder

    @property
    def ollama(self) -> str:
        return self.base

    @property
    def openai(self) -> str:
        return f"{self.base}/v1"


def snippets(e: Endpoint) -> dict[str, tuple[str, str]]:
    """Title → (language, code) for each way of connecting."""
    key = e.key or KEY_PLACEHOLDER
    body = json.dumps({"model": e.model, "messages": [{"role": "user", "content": "Hello"}]})
    return {
        "Open WebUI": (
            "bash",
            f"OLLAMA_BASE_URL={e.ollama}\n"
            f"OPENAI_API_BASE_URLS={e.openai}\n"
            f"OPENAI_API_KEYS={key}\n"
            "# Ollama connection: add the key as a Bearer header in its connection settings",
        ),
        "curl": (
            "bash",
            f"curl {e.openai}/chat/completions \\\n"
            f"  -H {shlex.quote('Authorization: Bearer ' + key)} \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            f"  -d {shlex.quote(body)}",
        ),
        "Python (ollama)": (
            "python",
            "from ollama import Client\n\n"
            f"client = Client(host={e.ollama!r}, headers={{'Authorization': {'Bearer ' + key!r}}})\n"
            f"reply = client.chat(model={e.model!r}, messages=[{{'role': 'user', 'content': 'Hello'}}])\n"
            "print(reply.message.content)",
        ),
        "Python (openai)": (
            "python",
            "from openai import OpenAI\n\n"
            f"client = OpenAI(base_url={e.openai!r}, api_key={key!r})\n"
            "reply = client.chat.completions.create(\n"
            f"    model={e.model!r}, messages=[{{'role': 'user', 'content': 'Hello'}}]\n"
            ")\n"
            "print(reply.choices[0].message.content)",
        ),
    }


def _copy_row(label: str, value: str) -> None:
    with ui.row().classes("w-full items-center no-wrap gap-2"):
        ui.label(label).classes("text-sm w-24 shrink-0")
        ui.label(value).classes("lm-mono text-sm ellipsis min-w-0 grow").mark(f"url-{label.lower()}")

        def copy() -> None:
            ui.clipboard.write(value)
            ui.notify(f"Copied {value}", type="positive")

        named(
            ui.button(icon="content_copy", on_click=copy).props("flat round dense"), f"Copy the {label} URL"
        )


class ConnectionPanel:
    def __init__(self, endpoint: Endpoint, *, note: str | None = None) -> None:
        with ui.column().classes("w-full gap-2 min-w-0").mark("connection-panel"):
            if note:
                ui.label(note).classes("text-sm opacity-75")
            _copy_row("Ollama", endpoint.ollama)
            _copy_row("OpenAI", endpoint.openai)
            examples = snippets(endpoint)
            with (
                ui.tabs()
                .props("dense no-caps inline-label outside-arrows mobile-arrows")
                .classes("w-full") as tabs
            ):
                for title in examples:
                    ui.tab(title)
            with ui.tab_panels(tabs, value=next(iter(examples))).classes("w-full min-w-0 bg-transparent"):
                for title, (language, code) in examples.items():
                    with ui.tab_panel(title).classes("q-pa-none min-w-0"):
                        block = ui.code(code, language=language).classes("w-full text-xs lm-wrap")
                        block.mark(f"snippet-{title}")
                        if getattr(block, "copy_button", None) is not None:
                            named(block.copy_button, f"Copy the {title} snippet")

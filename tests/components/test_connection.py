"""The connection snippets are valid as they are: Python that compiles, a curl line a shell can split,
Open WebUI's variables pointing at the proxy."""

from __future__ import annotations

import shlex

from components.connection import KEY_PLACEHOLDER, Endpoint, snippets


def test_snippets_carry_the_urls_and_the_key() -> None:
    e = Endpoint(base="http://gpu-box:42069", model="qwen2.5-7b", key="llm-abc'123")
    got = snippets(e)
    for title in ("Python (ollama)", "Python (openai)"):
        compile(got[title][1], title, "exec")  # a quote in the key must not break the code
    args = shlex.split(got["curl"][1].replace("\\\n", " "))
    assert args[1] == "http://gpu-box:42069/v1/chat/completions"
    assert "Authorization: Bearer llm-abc'123" in args
    webui = got["Open WebUI"][1]
    assert "OLLAMA_BASE_URL=http://gpu-box:42069\n" in webui
    assert "OPENAI_API_BASE_URLS=http://gpu-box:42069/v1\n" in webui


def test_without_a_key_the_snippets_show_where_it_goes() -> None:
    got = snippets(Endpoint(base="http://localhost:42069", model="m"))
    assert all(KEY_PLACEHOLDER in code for _, code in got.values())

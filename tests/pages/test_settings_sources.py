"""Where each runtime setting comes from, read from whatever shape the runtime settings report it in."""

from __future__ import annotations

from typing import Any

from pages.settings import setting_sources


class _Runtime:
    def __init__(self, sources: Any) -> None:
        self.sources = sources


def test_words_and_entries_with_the_variable_are_both_read() -> None:
    got = setting_sources(
        _Runtime({"max_models": "saved", "hf_token": {"source": "env", "env": "HF_TOKEN"}, "x": None})
    )
    assert got == {"max_models": ("saved", None), "hf_token": ("env", "HF_TOKEN")}


def test_a_method_is_called_and_a_runtime_without_sources_gives_nothing() -> None:
    class WithMethod:
        def sources(self) -> dict[str, str]:
            return {"require_auth": "default"}

    assert setting_sources(WithMethod()) == {"require_auth": ("default", None)}
    assert setting_sources(object()) == {}

"""The settings page says where each value comes from: a pinned one names its variable."""

from __future__ import annotations

from collections.abc import Callable

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from pages.settings import setting_sources


async def test_a_pinned_setting_names_its_variable_and_the_others_say_default_or_saved(
    make_settings: Callable[..., Settings],
) -> None:
    services = LlamaMan(make_settings(LLAMAMAN_MAX_MODELS=2))
    await services.start()
    try:
        await services.runtime.update({"download_retries": 4})
        got = setting_sources(services.runtime)
        assert got["max_models"] == ("env", "LLAMAMAN_MAX_MODELS")
        assert got["download_retries"] == ("saved", None)
        assert got["evict_manual"] == ("default", None)
    finally:
        await services.stop()

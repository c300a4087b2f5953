"""Which value a setting takes: a flag or environment variable set on purpose, then what a user
saved, then the default; and a pinned setting cannot be changed at run time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llamaman.app import LlamaMan
from llamaman.cli import parse_args, settings_from_args
from llamaman.core.config import Settings
from tests.helpers import api_client


async def started(settings: Settings) -> LlamaMan:
    services = LlamaMan(settings)
    await services.start()
    return services


async def test_an_environment_variable_wins_over_a_saved_value_after_a_restart(
    make_settings: Callable[..., Settings],
) -> None:
    first = await started(make_settings())
    try:
        async with api_client(first) as api:
            r = await api.post("/api/settings", json={"max_models": 3, "download_retries": 7})
            assert r.status_code == 200, r.text
            assert r.json()["sources"]["max_models"] == "saved"
    finally:
        await first.stop()

    again = await started(make_settings(LLAMAMAN_MAX_MODELS=1))
    try:
        assert again.runtime.current.max_models == 1  # not the saved 3
        assert again.runtime.current.download_retries == 7  # nothing pins it: the saved value holds
        async with api_client(again) as api:
            view = (await api.get("/api/settings")).json()
            assert view["max_models"] == 1
            assert view["sources"]["max_models"] == "env"
            assert view["sources"]["download_retries"] == "saved"
            assert view["sources"]["evict_manual"] == "default"
            assert view["pinned_by"] == {"max_models": "LLAMAMAN_MAX_MODELS"}

            refused = await api.post("/api/settings", json={"max_models": 2})
            assert refused.status_code == 409
            message = refused.json()["error"]
            assert "max_models is fixed by the environment (LLAMAMAN_MAX_MODELS)" in message
            assert again.runtime.current.max_models == 1

            # A form sends every field back: the pinned one unchanged goes through with the rest.
            ok = await api.post("/api/settings", json={"max_models": 1, "idle_timeout_min": 5})
            assert ok.status_code == 200, ok.text
            assert ok.json()["idle_timeout_min"] == 5 and ok.json()["sources"]["idle_timeout_min"] == "saved"
    finally:
        await again.stop()


async def test_every_runtime_setting_can_be_pinned_and_a_flag_says_so(
    tmp_path: Path, models_dir: Path, make_settings: Callable[..., Settings]
) -> None:
    pinned = make_settings(
        LLAMAMAN_EVICT_MANUAL="true",
        LLAMAMAN_CLEANUP_HOURS="2",
        LLAMAMAN_DOWNLOAD_RETRIES="9",
        LLAMAMAN_DOWNLOAD_SPEED_LIMIT_MBPS="50",
        LLAMAMAN_ACTIVITY_RETENTION="500",
        LLAMAMAN_IDLE_TIMEOUT="10",
        HF_TOKEN="hf_env",
    )
    services = await started(pinned)
    try:
        current = services.runtime.current
        assert (current.evict_manual, current.cleanup_hours, current.download_retries) == (True, 2, 9)
        assert (current.download_speed_limit_mbps, current.activity_retention) == (50, 500)
        assert (current.idle_timeout_min, current.hf_token) == (10, "hf_env")
        sources = services.runtime.sources()
        assert {k for k, v in sources.items() if v == "env"} == {
            "evict_manual", "cleanup_hours", "download_retries", "download_speed_limit_mbps",
            "activity_retention", "idle_timeout_min", "hf_token",
        }  # fmt: skip
        async with api_client(services) as api:
            r = await api.post("/api/settings", json={"idle_timeout_min": 1})
            assert r.status_code == 409 and "LLAMAMAN_IDLE_TIMEOUT" in r.json()["error"]
    finally:
        await services.stop()

    args = ["--data-dir", str(tmp_path / "flagged"), "--models-dir", str(models_dir), "--max-models", "2"]
    flagged = settings_from_args(parse_args([*args, "--proxy-port", "0"]))
    services = await started(flagged)
    try:
        assert services.runtime.current.max_models == 2
        assert services.runtime.sources()["max_models"] == "flag"
        async with api_client(services) as api:
            r = await api.post("/api/settings", json={"max_models": 4})
            assert r.status_code == 409 and "a command-line flag" in r.json()["error"]
    finally:
        await services.stop()


async def test_a_memory_limit_from_the_environment_applies_and_is_shown_as_pinned(
    make_settings: Callable[..., Settings],
) -> None:
    services = await started(make_settings(LLAMAMAN_MEMORY_LIMIT="cpu=2GiB"))
    try:
        assert services.runtime.current.memory_limit == "cpu=2GiB"
        assert services.runtime.sources()["memory_limit"] == "env"
        async with api_client(services) as api:
            [cpu] = (await api.get("/api/placement")).json()["devices"]
            assert cpu["limit"] == 2 * 1024**3
    finally:
        await services.stop()

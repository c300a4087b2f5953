"""Presets and settings through the REST API: saved, validated, redacted, kept across restarts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.tables import AppSetting, Preset
from tests.helpers import api_client

SECRET_KEY = "session-signing-secret-4711"
HF_TOKEN = "hf_privatetoken0815"


@pytest.fixture
def settings(make_settings: Callable[..., Settings], llama_server_bin: str) -> Settings:
    return make_settings(LLAMA_SERVER_BIN=llama_server_bin, SECRET_KEY=SECRET_KEY, HF_TOKEN=HF_TOKEN)


def stored_presets(services: LlamaMan) -> list[Preset]:
    with services.db.session() as s:
        return list(s.exec(select(Preset)))


def stored_settings(services: LlamaMan) -> dict[str, Any]:
    with services.db.session() as s:
        return {row.key: row.value for row in s.exec(select(AppSetting))}


# ---- presets ---------------------------------------------------------------------------------


async def test_preset_for_a_model_in_a_subfolder_is_saved_listed_read_and_deleted(
    api: httpx.AsyncClient, services: LlamaMan
) -> None:
    path = "embed/tiny-embed.gguf"
    assert (await api.get("/api/presets")).json() == {}

    saved = {"ctx_size": 1024, "embedding": True, "extra_args": "--pooling mean"}
    r = await api.put(f"/api/presets/{path}", json=saved)
    assert r.status_code == 200, r.text
    assert r.json() == {"model_path": path, "settings": saved}

    assert (await api.get("/api/presets")).json() == {path: saved}
    r = await api.get(f"/api/presets/{path}")
    assert r.status_code == 200 and r.json() == {"model_path": path, "settings": saved}
    [row] = stored_presets(services)
    assert row.model_path == path and row.settings == saved

    # Saving again replaces the values rather than merging them.
    r = await api.put(f"/api/presets/{path}", json={"settings": {"parallel": 2}})
    assert r.json()["settings"] == {"parallel": 2}
    assert (await api.get(f"/api/presets/{path}")).json()["settings"] == {"parallel": 2}

    r = await api.delete(f"/api/presets/{path}")
    assert r.status_code == 200 and r.json() == {"deleted": path}
    assert (await api.get("/api/presets")).json() == {}
    r = await api.get(f"/api/presets/{path}")
    assert r.status_code == 404 and path in r.json()["error"]
    assert (await api.delete(f"/api/presets/{path}")).status_code == 404
    assert stored_presets(services) == []


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"ctx_size": -1}, ("ctx_size", "greater than or equal to 0")),
        ({"ctx_size": 2048, "parallel": 0}, ("parallel",)),
        ({"n_gpu_layers": "all"}, ("n_gpu_layers", "integer")),
        ({"extra_args": "--foo; reboot"}, ("extra_args", "shell")),
        ({"sampling": {"temperature": -1}}, ("sampling.temperature",)),
        ({"bogus": 1}, ("bogus", "not permitted")),
    ],
    ids=["negative ctx_size", "zero parallel", "text for number", "shell syntax", "bad sampling", "unknown"],
)
async def test_preset_with_invalid_values_is_refused_with_a_message_and_nothing_is_stored(
    api: httpx.AsyncClient, services: LlamaMan, values: dict[str, Any], words: tuple[str, ...]
) -> None:
    r = await api.put("/api/presets/tiny-a.gguf", json=values)
    assert r.status_code == 422, r.text
    for word in words:
        assert word in r.json()["error"]
    assert (await api.get("/api/presets")).json() == {}
    assert stored_presets(services) == []


@pytest.mark.parametrize(
    "url_path",
    ["%2E%2E/x.gguf", "embed/%2E%2E/%2E%2E/x.gguf", "/etc/passwd"],
    ids=["dot-dot", "dot-dot inside", "absolute outside"],
)
async def test_preset_for_a_path_outside_the_models_folder_is_refused(
    api: httpx.AsyncClient, services: LlamaMan, url_path: str
) -> None:
    # Percent-encoded dots: the client would otherwise tidy ".." away before sending.
    r = await api.put(f"/api/presets/{url_path}", json={"ctx_size": 512})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "'..' is not allowed" in error or "outside the models folder" in error
    assert stored_presets(services) == []


# ---- settings --------------------------------------------------------------------------------


async def test_settings_show_the_llama_server_and_hide_secrets(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    r = await api.get("/api/settings")
    assert r.status_code == 200
    body = r.json()
    assert settings.llama_server_bin is not None
    assert body["llama_server"]["path"] == str(Path(settings.llama_server_bin).resolve())
    assert isinstance(body["llama_server"]["version"], str) and body["llama_server"]["version"]
    assert body["database"] == "sqlite"
    assert body["environment"]["secret_key"] == "***"
    assert body["environment"]["hf_token"] == "***"
    assert body["hf_token"] == "***"
    assert SECRET_KEY not in r.text and HF_TOKEN not in r.text
    assert body["environment"]["models_dir"] == str(settings.models_dir)


async def test_changed_max_models_survives_a_restart(settings: Settings) -> None:
    first = LlamaMan(settings)
    await first.start()
    try:
        async with api_client(first) as api:
            assert (await api.get("/api/settings")).json()["max_models"] == 0
            r = await api.post("/api/settings", json={"max_models": 3})
            assert r.status_code == 200, r.text
            assert r.json()["max_models"] == 3
            assert first.runtime.current.max_models == 3
    finally:
        await first.stop()

    second = LlamaMan(settings)
    await second.start()
    try:
        async with api_client(second) as api:
            body = (await api.get("/api/settings")).json()
        assert body["max_models"] == 3
        assert second.runtime.current.max_models == 3
        # The redacted token shown in the UI, sent back unchanged, does not replace the real one.
        async with api_client(second) as api:
            r = await api.post("/api/settings", json={"hf_token": "***", "idle_timeout_min": 5})
        assert r.status_code == 200
        assert second.runtime.current.hf_token == HF_TOKEN
        assert second.runtime.current.idle_timeout_min == 5
    finally:
        await second.stop()


async def test_settings_a_user_never_saved_keep_following_the_environment(
    make_settings: Callable[..., Settings], llama_server_bin: str
) -> None:
    first = LlamaMan(make_settings(LLAMA_SERVER_BIN=llama_server_bin, HF_TOKEN=HF_TOKEN))
    await first.start()
    try:
        async with api_client(first) as api:
            assert (await api.post("/api/settings", json={"idle_timeout_min": 7})).status_code == 200
        # Only what was saved is stored: the token from the environment stays out of the database.
        assert stored_settings(first)["runtime"] == {"idle_timeout_min": 7}
    finally:
        await first.stop()

    # Restarted with a new environment: what the user saved wins, the rest follows the environment.
    second = LlamaMan(
        make_settings(LLAMA_SERVER_BIN=llama_server_bin, HF_TOKEN="hf_rotated", LLAMAMAN_MAX_MODELS=2)
    )
    await second.start()
    try:
        current = second.runtime.current
        assert (current.idle_timeout_min, current.max_models, current.hf_token) == (7, 2, "hf_rotated")
    finally:
        await second.stop()


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"max_models": -1}, ("max_models", "greater than or equal to 0")),
        ({"max_models": "many"}, ("max_models", "integer")),
        ({"bogus": 1}, ("bogus", "not permitted")),
        ({"max_models": 4, "bogus": 1}, ("bogus",)),
    ],
    ids=["negative", "text for a number", "unknown key", "valid with unknown key"],
)
async def test_invalid_settings_are_refused_and_nothing_changes(
    api: httpx.AsyncClient, services: LlamaMan, changes: dict[str, Any], words: tuple[str, ...]
) -> None:
    before, stored_before = (await api.get("/api/settings")).json(), stored_settings(services)
    r = await api.post("/api/settings", json=changes)
    assert r.status_code == 422, r.text
    for word in words:
        assert word in r.json()["error"]
    assert (await api.get("/api/settings")).json() == before
    assert services.runtime.current.max_models == 0
    assert stored_settings(services) == stored_before

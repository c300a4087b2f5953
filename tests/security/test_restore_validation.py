"""POST /api/restore and /api/settings are validated like live calls: wrong types, paths out of the
models folder, aliases that shadow models and non-finite numbers are refused with a 4xx naming the
field, and nothing of a refused backup is written."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlmodel import select

from llamaman.app import LlamaMan, create_app
from llamaman.core.config import Settings
from llamaman.core.tables import ModelAlias, ModelSource, Preset
from tests.helpers import admin_headers

SRC = {"model_path": "new/x.gguf", "repo_id": "org/repo", "filename": "x.gguf", "revision": "main"}


@pytest.fixture
async def box(make_settings: Callable[..., Settings]) -> AsyncIterator[LlamaMan]:
    services = LlamaMan(make_settings(LLAMA_SERVER_BIN="/nonexistent/llama-server"))
    await services.start()
    try:
        yield services
    finally:
        await services.stop()


@pytest.fixture
async def api(box: LlamaMan) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(box, manage_lifecycle=False)
    headers = await admin_headers(box)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as c:
        yield c


def stored(services: LlamaMan) -> tuple[list[str], list[str], list[str]]:
    with services.db.session() as s:
        return (
            sorted(p.model_path for p in s.exec(select(Preset))),
            sorted(a.alias for a in s.exec(select(ModelAlias))),
            sorted(m.model_path for m in s.exec(select(ModelSource))),
        )


def backup(**parts: Any) -> dict[str, Any]:
    # A valid preset and alias ride along: a refused backup must not write them either.
    good = {"presets": {"tiny-a.gguf": {"ctx_size": 512}}, "aliases": {"friendly": "tiny-a"}}
    return {"llamaman_backup": 1, **good, **parts}


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("sources not a list", {"llamaman_backup": 1, "sources": 5}, "sources"),
    ("format is a string", {"llamaman_backup": "1"}, "llamaman_backup"),
    ("format is a bool", {"llamaman_backup": True}, "llamaman_backup"),
    ("format too new", {"llamaman_backup": 99}, "format 99"),
    ("models not a list", backup(models={"a": 1}), "models"),
    ("model not an object", backup(models=[5]), "models[0]"),
    ("model path missing", backup(models=[{"files": []}]), "models[0].path"),
    ("model path escapes", backup(models=[{"path": "../../etc/passwd"}]), "models[0].path"),
    ("model path absolute", backup(models=[{"path": "/etc/passwd"}]), "models[0].path"),
    ("model files escape", backup(models=[{"path": "a.gguf", "files": ["a.gguf", "../b.gguf"]}]), "files[1]"),
    ("model files not a list", backup(models=[{"path": "a.gguf", "files": "a.gguf"}]), "models[0].files"),
    ("backslash path", backup(models=[{"path": "..\\..\\x.gguf"}]), "models[0].path"),
    ("source not an object", backup(sources=["x"]), "sources[0]"),
    ("source path escapes", backup(sources=[{**SRC, "model_path": "../x.gguf"}]), "sources[0].model_path"),
    ("source file escapes", backup(sources=[{**SRC, "filename": "/etc/x"}]), "sources[0].filename"),
    ("source repo wrong type", backup(sources=[{**SRC, "repo_id": 5}]), "sources[0]"),
    ("preset key escapes", backup(presets={"../../x.gguf": {"ctx_size": 512}}), "presets['../../x.gguf']"),
    ("preset key absolute", backup(presets={"/etc/x.gguf": {"ctx_size": 512}}), "presets['/etc/x.gguf']"),
    ("preset values wrong type", backup(presets={"tiny-b.gguf": [1]}), "presets['tiny-b.gguf']"),
    ("preset values invalid", backup(presets={"tiny-b.gguf": {"ctx_size": -1}}), "ctx_size"),
    ("presets not an object", backup(presets=[1]), "presets"),
    ("alias shadows a model", backup(aliases={"tiny-b": "tiny-a"}), "aliases['tiny-b']"),
    ("alias shadows a path", backup(aliases={"tiny-b.gguf": "tiny-a"}), "aliases['tiny-b.gguf']"),
    ("alias target wrong type", backup(aliases={"x": 5}), "aliases['x']"),
    ("alias with control char", backup(aliases={"x\ny": "tiny-a"}), "aliases"),
    ("aliases not an object", backup(aliases="x"), "aliases"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD, ids=[b[0] for b in BAD])
async def test_a_bad_backup_is_refused_whole(
    api: httpx.AsyncClient, box: LlamaMan, case: str, body: dict[str, Any], field: str
) -> None:
    before = stored(box)
    r = await api.post("/api/restore", json=body)
    assert r.status_code == 400, (case, r.status_code, r.text)
    assert field in r.json()["detail"], (case, r.json())
    assert stored(box) == before
    assert "friendly" not in box.aliases.aliases


async def test_a_good_backup_still_restores(api: httpx.AsyncClient, box: LlamaMan) -> None:
    r = await api.post("/api/restore", json=backup(models=[{"path": "tiny-a.gguf"}]))
    assert r.status_code == 200, r.text
    assert r.json()["presets_restored"] == ["tiny-a.gguf"] and r.json()["aliases_restored"] == ["friendly"]
    assert r.json()["models_present"] == ["tiny-a.gguf"]


@pytest.mark.parametrize(
    "body",
    [b"[1,2]", b'"x"', b"5", b'{"llamaman_backup":1,"sources":5', b'\xef\xbb\xbf{"llamaman_backup":1}'],
)
async def test_restore_refuses_what_is_not_a_backup(api: httpx.AsyncClient, body: bytes) -> None:
    r = await api.post("/api/restore", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (b'{"idle_timeout_min": 1e308, "max_models": 1e400}', None),
        (b'{"idle_timeout_min": Infinity}', None),
        (b'{"max_models": 100000000000000000000000000}', "max_models"),
        (b'{"download_speed_limit_mbps": 1e300}', "download_speed_limit_mbps"),
        (b'{"hf_token": "abc\\r\\nX-Injected: 1"}', "hf_token"),
        (b'{"require_auth": "no"}', "require_auth"),
        (b'{"activity_retention": -5}', "activity_retention"),
    ],
)
async def test_settings_refuse_numbers_out_of_range(
    api: httpx.AsyncClient, box: LlamaMan, changes: bytes, field: str | None
) -> None:
    before = box.runtime.current
    r = await api.post("/api/settings", content=changes, headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 422), r.text
    if field:
        assert field in r.json()["detail"]
    assert box.runtime.current == before


async def test_data_files_are_private(box: LlamaMan) -> None:
    create_app(box, manage_lifecycle=False)
    data = box.settings.data_dir
    assert box.settings.logs_dir is not None
    assert stat.S_IMODE(os.stat(box.settings.logs_dir).st_mode) & 0o077 == 0
    assert stat.S_IMODE(os.stat(data).st_mode) & 0o077 == 0
    for f in data.rglob("*"):
        if f.is_file() and f.name.startswith(("llamaman.db", "secret_key")):
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f

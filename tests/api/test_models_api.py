"""The model library REST API: listing, layers, memory estimates, deleting; disk space and health."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import gguf
import httpx
import pytest

from llamaman import __version__
from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.state import InstanceState
from llamaman.testing.tiny_gguf import write_tiny_model

S = InstanceState
SPLIT_PARTS = [f"split/big-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """The library needs no llama-server; the one test that launches asks for ``llama_server_bin``."""
    return make_settings()


@pytest.fixture
def split_model(models_dir: Path) -> list[Path]:
    return write_tiny_model(models_dir / "split" / "big.gguf", "A", n_parts=3)


def block_count(path: Path) -> int:
    """The model's layer count as the GGUF file itself states it."""
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    return int(reader.fields[f"{arch}.block_count"].contents())


# ---- listing ---------------------------------------------------------------------------------


async def test_models_list_shows_each_model_once_with_its_capabilities_and_errors(
    api: httpx.AsyncClient, split_model: list[Path], truncated_model: Path
) -> None:
    r = await api.get("/api/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()}
    assert sorted(models) == ["big", "broken", "tiny-a", "tiny-b", "tiny-embed"]
    assert len(r.json()) == 5  # the three parts of "big" are one entry

    assert models["tiny-a"]["capabilities"] == ["completion"]
    assert models["tiny-a"]["launchable"] is True and models["tiny-a"]["error"] is None
    assert models["tiny-b"]["rel_path"] == "tiny-b.gguf"
    assert models["tiny-embed"]["rel_path"] == "embed/tiny-embed.gguf"
    assert models["tiny-embed"]["capabilities"] == ["embedding"]

    big = models["big"]
    assert big["parts"] == SPLIT_PARTS
    assert big["rel_path"] == SPLIT_PARTS[0]
    assert big["size_bytes"] == sum(p.stat().st_size for p in split_model)
    assert big["error"] is None and big["launchable"] is True

    broken = models["broken"]
    assert broken["launchable"] is False
    assert broken["error"] and "truncated" in broken["error"]


async def test_models_list_follows_files_added_and_removed(api: httpx.AsyncClient, models_dir: Path) -> None:
    before = {m["name"] for m in (await api.get("/api/models")).json()}
    write_tiny_model(models_dir / "later" / "new-one.gguf", "B")
    (models_dir / "tiny-b.gguf").unlink()
    after = {m["name"] for m in (await api.get("/api/models")).json()}
    assert after == (before - {"tiny-b"}) | {"new-one"}


# ---- layers and memory -----------------------------------------------------------------------


async def test_model_layers_is_the_block_count_written_in_the_file(
    api: httpx.AsyncClient, models_dir: Path, split_model: list[Path]
) -> None:
    expected = block_count(models_dir / "tiny-a.gguf")
    assert expected == 2
    r = await api.get("/api/model-layers", params={"path": "tiny-a.gguf"})
    assert r.status_code == 200
    assert r.json() == {"path": "tiny-a.gguf", "layers": expected}
    # A split model keeps its metadata in the first part; asking for any part gives the same.
    for part in SPLIT_PARTS:
        r = await api.get("/api/model-layers", params={"path": part})
        assert r.json()["layers"] == block_count(split_model[0])


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("../x", 400, "'..' is not allowed"),
        ("sub/../../x.gguf", 400, "'..' is not allowed"),
        ("/etc/passwd", 400, "outside the models folder"),
        ("missing.gguf", 404, "not found"),
        ("broken.gguf", 400, "truncated"),
    ],
)
async def test_model_layers_of_a_bad_path_is_refused_with_a_message(
    api: httpx.AsyncClient, truncated_model: Path, path: str, status: int, words: str
) -> None:
    r = await api.get("/api/model-layers", params={"path": path})
    assert r.status_code == status
    assert words in r.json()["error"]


async def test_model_memory_estimate_grows_with_the_context(api: httpx.AsyncClient) -> None:
    small = await api.get("/api/model-memory", params={"path": "tiny-a.gguf", "ctx_size": 512})
    large = await api.get("/api/model-memory", params={"path": "tiny-a.gguf", "ctx_size": 1024})
    assert small.status_code == large.status_code == 200
    s, big = small.json(), large.json()
    assert s["ctx_size"] == 512 and s["n_layers"] == 2
    assert s["weights_bytes"] > 0 and s["kv_bytes"] > 0
    assert s["total_bytes"] == s["gpu_bytes"] + s["cpu_bytes"]
    assert big["kv_bytes"] == 2 * s["kv_bytes"]
    assert big["weights_bytes"] == s["weights_bytes"]

    on_cpu = (await api.get("/api/model-memory", params={"path": "tiny-a.gguf", "n_gpu_layers": 0})).json()
    assert on_cpu["gpu_layers"] == 0 and on_cpu["cpu_bytes"] > on_cpu["gpu_bytes"]


async def test_model_memory_is_estimated_for_a_model_copied_in_after_start(
    api: httpx.AsyncClient, models_dir: Path
) -> None:
    write_tiny_model(models_dir / "copied" / "late.gguf", "B")
    r = await api.get("/api/model-memory", params={"path": "copied/late.gguf", "ctx_size": 512})
    assert r.status_code == 200, r.text
    assert r.json()["n_layers"] == block_count(models_dir / "copied" / "late.gguf")


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"path": "missing.gguf"}, 404, "model not found"),
        ({"path": "broken.gguf"}, 400, "truncated"),
        ({"path": "tiny-a.gguf", "cache_type_k": "q9"}, 400, "unknown KV cache type"),
        ({"path": "tiny-a.gguf", "ctx_size": -5}, 422, "ctx_size"),
    ],
)
async def test_model_memory_of_a_bad_request_is_refused_with_a_message(
    api: httpx.AsyncClient, truncated_model: Path, params: dict[str, str | int], status: int, words: str
) -> None:
    r = await api.get("/api/model-memory", params=params)
    assert r.status_code == status
    assert words in r.json()["error"]


# ---- deleting --------------------------------------------------------------------------------


@pytest.mark.parametrize("named_part", [0, 1], ids=["first part", "middle part"])
async def test_deleting_a_split_model_removes_all_its_parts(
    api: httpx.AsyncClient, split_model: list[Path], named_part: int
) -> None:
    r = await api.post("/api/models/delete", json={"path": SPLIT_PARTS[named_part]})
    assert r.status_code == 200, r.text
    assert r.json() == {"deleted": SPLIT_PARTS}
    assert not any(p.exists() for p in split_model)
    names = {m["name"] for m in (await api.get("/api/models")).json()}
    assert names == {"tiny-a", "tiny-b", "tiny-embed"}


async def test_deleting_a_model_in_a_subfolder_leaves_the_others(
    api: httpx.AsyncClient, models_dir: Path
) -> None:
    r = await api.post("/api/models/delete", json={"path": "embed/tiny-embed.gguf"})
    assert r.status_code == 200
    assert r.json() == {"deleted": ["embed/tiny-embed.gguf"]}
    assert not (models_dir / "embed" / "tiny-embed.gguf").exists()
    assert (models_dir / "tiny-a.gguf").exists() and (models_dir / "tiny-b.gguf").exists()


@pytest.mark.parametrize(
    ("spelling", "words"),
    [("absolute", "outside the models folder"), ("dot-dot", "'..' is not allowed")],
    ids=["absolute", "dot-dot"],
)
async def test_deleting_a_file_outside_the_models_folder_is_refused_and_it_survives(
    api: httpx.AsyncClient, models_dir: Path, spelling: str, words: str
) -> None:
    outside = models_dir.parent / "outside.gguf"
    write_tiny_model(outside)
    path = str(outside) if spelling == "absolute" else "../outside.gguf"
    r = await api.post("/api/models/delete", json={"path": path})
    assert r.status_code == 400
    assert words in r.json()["error"]
    assert outside.exists()


async def test_deleting_something_that_is_not_a_model_is_answered_with_404(
    api: httpx.AsyncClient, models_dir: Path
) -> None:
    r = await api.post("/api/models/delete", json={"path": "missing.gguf"})
    assert r.status_code == 404
    assert "missing.gguf" in r.json()["error"]
    assert {p.name for p in models_dir.rglob("*.gguf")} == {"tiny-a.gguf", "tiny-b.gguf", "tiny-embed.gguf"}


async def test_a_model_in_use_cannot_be_deleted_until_its_instance_stops(
    api: httpx.AsyncClient, services: LlamaMan, models_dir: Path, llama_server_bin: str
) -> None:
    r = await api.post("/api/instances", json={"model_path": "tiny-a.gguf", "ctx_size": 512})
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    m = services.supervisor.get(iid)
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY, m.proc.error

    r = await api.post("/api/models/delete", json={"path": "tiny-a.gguf"})
    assert r.status_code == 409
    assert iid in r.json()["error"] and "stop" in r.json()["error"]
    assert (models_dir / "tiny-a.gguf").exists()
    assert m.state == S.HEALTHY

    await api.delete(f"/api/instances/{iid}")
    r = await api.post("/api/models/delete", json={"path": "tiny-a.gguf"})
    assert r.status_code == 200
    assert not (models_dir / "tiny-a.gguf").exists()


# ---- system ----------------------------------------------------------------------------------


async def test_disk_space_is_reported_for_the_models_folder(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    r = await api.get("/api/disk-space")
    assert r.status_code == 200
    d = r.json()
    assert d["path"] == str(settings.models_dir)
    assert d["total"] == shutil.disk_usage(settings.models_dir).total > 0
    assert 0 <= d["used"] <= d["total"] and 0 <= d["free"] <= d["total"]
    assert 0 <= d["percent"] <= 100


async def test_health_answers_ok_with_the_version(api: httpx.AsyncClient) -> None:
    r = await api.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": __version__}

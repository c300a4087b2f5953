"""Backup and restore: presets merge back, missing models with a known source are re-downloaded."""

from __future__ import annotations

from sqlmodel import delete

from llamaman.app import LlamaMan
from llamaman.core.tables import ModelSource
from tests.downloads.conftest import finished
from tests.helpers import api_client


async def test_backup_wipe_restore(dl: LlamaMan) -> None:
    job = await dl.downloads.create("user/split", "split-Q4_K_M-00001-of-00003.gguf")
    await finished(dl, job)
    downloaded = "user/split/split-Q4_K_M-00001-of-00003.gguf"
    await dl.presets.put(downloaded, {"ctx_size": 2048, "parallel": 2})
    await dl.presets.put("tiny-a.gguf", {"ctx_size": 1024, "threads": 2})
    await dl.aliases.put("split", downloaded)

    async with api_client(dl) as api:
        r = await api.get("/api/backup")
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        backup = r.json()
        by_path = {m["path"]: m for m in backup["models"]}
        assert len(by_path[downloaded]["files"]) == 3 and by_path[downloaded]["size_bytes"] > 0
        assert set(by_path[downloaded]["sources"]) == set(by_path[downloaded]["files"])
        assert by_path["tiny-b.gguf"]["sources"] == {}
        assert backup["presets"][downloaded] == {"ctx_size": 2048, "parallel": 2}

        # Wipe: the downloaded model, a local model without a source, presets, aliases, sources.
        dl.library.delete(downloaded)
        dl.library.delete("tiny-b.gguf")
        for path in (downloaded, "tiny-a.gguf"):
            await dl.presets.delete(path)
        await dl.aliases.delete("split")
        with dl.db.session() as s:
            s.exec(delete(ModelSource))  # type: ignore[call-overload]
            s.commit()
        await dl.presets.put("tiny-a.gguf", {"ctx_size": 512})  # set since the backup: must survive

        r = await api.post("/api/restore", json=backup)
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["not_restorable"] == [
            {"path": "tiny-b.gguf", "reason": "the model file is missing and its source is unknown"}
        ]
        [queued] = report["downloads_queued"]
        assert queued["repo_id"] == "user/split" and len(queued["files"]) == 3
        assert report["presets_restored"] == [downloaded] and report["presets_merged"] == ["tiny-a.gguf"]
        assert report["aliases_restored"] == ["split"] and report["sources_restored"] == 3

        assert (await api.post("/api/restore", json={"models": []})).status_code == 400

    again = await finished(dl, dl.downloads.get(queued["id"]))
    assert again.status == "completed", again.record.error
    entry = dl.library.find(downloaded)
    assert entry is not None and entry.launchable and len(entry.parts) == 3
    assert await dl.presets.get(downloaded) == {"ctx_size": 2048, "parallel": 2}
    assert await dl.presets.get("tiny-a.gguf") == {"ctx_size": 512, "threads": 2}
    assert dl.router.resolve("split") is not None

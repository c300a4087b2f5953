"""Downloads against a fake Hugging Face hub: completion, limits, cancel, retry, resume, validation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.core.events import Event
from llamaman.core.state import InstanceState
from llamaman.core.tables import Download, ModelSource
from llamaman.instances.launch import LaunchSettings
from llamaman.testing.fake_hub import FakeHub
from tests.downloads.conftest import BIG_SIZE, ask, finished, start_services, until
from tests.helpers import api_client

S = InstanceState


def staged(svc: LlamaMan, job_id: str) -> Path:
    return svc.downloads.staging / job_id


async def test_download_completes_lands_in_library_and_launches(
    dl: LlamaMan, hub: FakeHub, llama_server_bin: str
) -> None:
    progress: list[Event] = []
    dl.events.listen(progress.append, "download.progress")
    async with api_client(dl) as api:
        r = await api.post("/api/downloads", json={"repo_id": "user/repo", "filename": "tiny-Q4_K_M.gguf"})
        assert r.status_code == 201, r.text
        view = r.json()
        assert view["files"][0]["name"] == "tiny-Q4_K_M.gguf" and "hf_token" not in view
        job = await finished(dl, dl.downloads.get(view["id"]))
        assert job.status == "completed", job.record.error
        got = (await api.get(f"/api/downloads/{job.id}")).json()
        assert got["bytes_done"] == got["bytes_total"] > 0 and got["progress"] == 100
        assert any(r["id"] == job.id for r in (await api.get("/api/downloads")).json())
        logs = (await api.get(f"/api/downloads/{job.id}/logs")).json()["lines"]
        assert any("placed user/repo/tiny-Q4_K_M.gguf" in line for line in logs)

    final = dl.library.models_dir / "user/repo/tiny-Q4_K_M.gguf"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == hub.repos["user/repo"].sha256("tiny-Q4_K_M.gguf")
    assert not staged(dl, job.id).exists()
    assert progress and progress[-1].data["bytes_total"] == final.stat().st_size
    entry = dl.library.find("user/repo/tiny-Q4_K_M.gguf")
    assert entry is not None and entry.launchable
    with dl.db.session() as s:
        src = s.get(ModelSource, "user/repo/tiny-Q4_K_M.gguf")
        assert src is not None and src.repo_id == "user/repo" and src.revision == hub.repos["user/repo"].sha

    m = await dl.supervisor.launch(LaunchSettings(model_path=entry.rel_path, ctx_size=512))
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY
    assert (await ask(m.base_url, headers=m.proc.auth_headers)).startswith("abcdef")

    # Cleanup forgets the finished download and the stopped instance once they are old enough.
    await dl.supervisor.stop(m.id)
    await dl.runtime.update({"cleanup_hours": 1})
    report = await dl.downloads.cleanup_once(now=time.time() + 3600 + 60)
    assert report.downloads_removed == [job.id] and report.instances_removed == [m.id]
    assert dl.downloads.jobs == {} and dl.supervisor.list() == []
    assert final.exists()  # forgetting a download never deletes its model


async def test_speed_limit_per_download_and_global(dl: LlamaMan, hub: FakeHub) -> None:
    limit = 8.0  # Mbps: 1 MB/s, so the 3 MB file takes about 3 s
    job = await dl.downloads.create("user/big", "big-Q4_K_M.gguf", speed_limit_mbps=limit)
    await finished(dl, job)
    assert job.status == "completed", job.record.error
    assert job.bytes_done == BIG_SIZE
    rate = BIG_SIZE * 8 / 1e6 / (job.record.finished_at - job.started_at)  # type: ignore[operator]
    assert limit * 0.8 <= rate <= limit * 1.2, f"{rate:.2f} Mbps under an {limit} Mbps limit"

    # A global limit is shared: two downloads together stay under it.
    hub.add_model("user/big2", "big-Q4_K_M.gguf", "B", pad_to=BIG_SIZE // 4)
    hub.add_model("user/big3", "big-Q4_K_M.gguf", "A", pad_to=BIG_SIZE // 4)
    await dl.runtime.update({"download_speed_limit_mbps": 12.0})
    t0 = time.monotonic()
    a = await dl.downloads.create("user/big2", "big-Q4_K_M.gguf")
    b = await dl.downloads.create("user/big3", "big-Q4_K_M.gguf")
    await asyncio.gather(finished(dl, a), finished(dl, b))
    both = (a.bytes_done + b.bytes_done) * 8 / 1e6 / (time.monotonic() - t0)
    assert 12 * 0.8 <= both <= 12 * 1.2, f"{both:.2f} Mbps under a 12 Mbps global limit"


async def test_cancel_removes_partial_data(dl: LlamaMan, hub: FakeHub) -> None:
    hub.throttle_bps = 300_000
    async with api_client(dl) as api:
        r = await api.post("/api/downloads", json={"repo_id": "user/big", "filename": "big-Q4_K_M.gguf"})
        job = dl.downloads.get(r.json()["id"])
        part = staged(dl, job.id) / "big-Q4_K_M.gguf.part"
        await until(lambda: part.exists() and part.stat().st_size > 0)
        r = await api.delete(f"/api/downloads/{job.id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert not staged(dl, job.id).exists()
    assert not (dl.library.models_dir / "user/big").exists()
    assert job.bytes_done == 0


async def test_server_errors_and_dropped_connections_are_retried(dl: LlamaMan, hub: FakeHub) -> None:
    hub.fail_next(2)
    hub.cut_next(200_000)
    job = await dl.downloads.create("user/big", "big-Q4_K_M.gguf")
    await finished(dl, job)
    assert job.status == "completed", job.record.error
    assert job.record.attempts == 3
    ranges = [r.range for r in hub.file_gets("big-Q4_K_M.gguf")]
    # Two refused GETs, one cut short, then a resume from where the cut left off.
    assert ranges[:3] == [None, None, None] and ranges[3] is not None and ranges[3].startswith("bytes=")
    assert int(ranges[3].removeprefix("bytes=").rstrip("-")) > 0
    data = (dl.library.models_dir / "user/big/big-Q4_K_M.gguf").read_bytes()
    assert hashlib.sha256(data).hexdigest() == hub.repos["user/big"].sha256("big-Q4_K_M.gguf")


async def test_gives_up_after_the_configured_retries(dl: LlamaMan, hub: FakeHub) -> None:
    await dl.runtime.update({"download_retries": 1})
    hub.fail_next(5, status=503)
    job = await dl.downloads.create("user/repo", "tiny-Q8_0.gguf")
    await finished(dl, job)
    assert job.status == "failed" and "gave up after 1 retries" in (job.record.error or "")
    assert len(hub.file_gets("tiny-Q8_0.gguf")) == 2


async def test_restart_resumes_from_the_bytes_on_disk(hub_settings: object, hub: FakeHub) -> None:
    hub.throttle_bps = 400_000
    first = await start_services(hub_settings)  # type: ignore[arg-type]
    job = await first.downloads.create("user/big", "big-Q4_K_M.gguf")
    part = staged(first, job.id) / "big-Q4_K_M.gguf.part"
    await until(lambda: part.exists() and part.stat().st_size >= 300_000)
    await first.stop()
    kept = part.stat().st_size
    assert 0 < kept < BIG_SIZE
    with first.db.session() as s:
        assert s.get(Download, job.id).status == "downloading"  # type: ignore[union-attr]

    hub.throttle_bps = 0
    second = await start_services(hub_settings)  # type: ignore[arg-type]
    try:
        again = await finished(second, second.downloads.get(job.id))
        assert again.status == "completed", again.record.error
        assert hub.file_gets("big-Q4_K_M.gguf")[-1].range == f"bytes={kept}-"
        data = (second.library.models_dir / "user/big/big-Q4_K_M.gguf").read_bytes()
        assert hashlib.sha256(data).hexdigest() == hub.repos["user/big"].sha256("big-Q4_K_M.gguf")
        assert any("resuming at" in line for line in again.logs)
    finally:
        await second.stop()


async def test_one_part_of_a_split_queues_every_part_and_blank_takes_the_repo(dl: LlamaMan) -> None:
    async with api_client(dl) as api:
        r = await api.post(
            "/api/downloads", json={"repo_id": "user/split", "filename": "split-Q4_K_M-00002-of-00003.gguf"}
        )
        assert r.status_code == 201, r.text
        assert [f["name"] for f in r.json()["files"]] == [
            f"split-Q4_K_M-{n:05d}-of-00003.gguf" for n in (1, 2, 3)
        ]
    job = await finished(dl, dl.downloads.get(r.json()["id"]))
    assert job.status == "completed", job.record.error
    entry = dl.library.find("user/split/split-Q4_K_M-00001-of-00003.gguf")
    assert entry is not None and entry.error is None and len(entry.parts) == 3

    # No file name: the whole repo, GGUF files only.
    async with api_client(dl) as api:
        r = await api.post("/api/downloads", json={"repo_id": "user/repo", "filename": ""})
    assert r.status_code == 201, r.text
    assert sorted(f["name"] for f in r.json()["files"]) == ["tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"]
    job = await finished(dl, dl.downloads.get(r.json()["id"]))
    assert job.status == "completed"
    assert not (dl.library.models_dir / "user/repo/README.md").exists()


async def test_bad_requests_and_a_full_disk_get_clear_errors(dl: LlamaMan, hub: FakeHub) -> None:
    hub.add_file("user/evil", "../../escape.gguf", b"GGUF")
    async with api_client(dl) as api:
        cases = [
            ({"repo_id": "not a repo!"}, 400, "invalid repo id"),
            ({"repo_id": "user/nope"}, 404, "not found"),
            ({"repo_id": "user/repo", "filename": "missing.gguf"}, 404, "has no file"),
            ({"repo_id": "user/repo", "filename": "../../etc/passwd"}, 400, "'..' is not allowed"),
            ({"repo_id": "user/evil"}, 400, "'..' is not allowed"),
            ({"repo_id": "user/repo", "speed_limit_mbps": -1}, 422, "speed_limit_mbps"),
            ({}, 422, "repo_id"),
        ]
        for body, status, text in cases:
            r = await api.post("/api/downloads", json=body)
            assert r.status_code == status, (body, r.text)
            assert text in r.json()["error"], (body, r.text)
        assert (await api.get("/api/downloads/nope")).status_code == 404
        assert (await api.delete("/api/downloads/nope/remove")).status_code == 404
        assert not (dl.library.models_dir.parent / "escape.gguf").exists()

        dl.downloads.disk_free = lambda _: 1_000_000
        r = await api.post("/api/downloads", json={"repo_id": "user/big", "filename": "big-Q4_K_M.gguf"})
    assert r.status_code == 507
    assert "not enough disk space" in r.json()["error"] and "3.0 MB" in r.json()["error"]
    assert dl.downloads.jobs == {}


async def test_log_stream_and_remove(dl: LlamaMan, hub: FakeHub) -> None:
    hub.throttle_bps = 400_000
    job = await dl.downloads.create("user/repo", "tiny-Q8_0.gguf")
    seen: list[str] = []
    async with api_client(dl, streaming=True) as sse:
        async with sse.stream("GET", f"/api/downloads/{job.id}/logs/stream") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                seen.append(line)
                if len(seen) > 1 and seen[-2].startswith("event: done"):
                    break
    assert "event: progress" in seen and any("placed user/repo" in line for line in seen)
    assert json.loads(seen[seen.index("event: done") + 1].removeprefix("data: ")) == "completed"
    async with api_client(dl) as api:
        assert (await api.delete(f"/api/downloads/{job.id}/remove")).json() == {"removed": job.id}
    with dl.db.session() as s:
        assert s.exec(select(Download)).all() == []


async def test_orphaned_download_is_marked_interrupted_and_resumes(dl: LlamaMan) -> None:
    job = await dl.downloads.create("user/repo", "tiny-Q8_0.gguf")
    await finished(dl, job)
    # A worker that vanished leaves an active record behind.
    job.record.status = "downloading"
    job.finished.clear()
    assert dl.downloads.mark_orphans() == [job.id] and job.status == "interrupted"
    (dl.library.models_dir / "user/repo/tiny-Q8_0.gguf").unlink()
    async with api_client(dl) as api:
        assert (await api.post(f"/api/downloads/{job.id}/resume")).status_code == 200
    await finished(dl, job)
    assert job.status == "completed" and (dl.library.models_dir / "user/repo/tiny-Q8_0.gguf").exists()


async def test_private_repo_needs_a_token(dl: LlamaMan, hub: FakeHub) -> None:
    hub.require_token("user/repo", "hf_secret")
    body = {"repo_id": "user/repo", "filename": "tiny-Q8_0.gguf"}
    async with api_client(dl) as api:
        r = await api.post("/api/downloads", json=body)
        assert r.status_code == 404 and "token" in r.json()["error"]
        r = await api.post("/api/downloads", json={**body, "hf_token": "hf_secret"})
    assert r.status_code == 201 and r.json()["has_token"] is True
    job = await finished(dl, dl.downloads.get(r.json()["id"]))
    assert job.status == "completed", job.record.error
    assert {r.authorization for r in hub.file_gets()} == {"Bearer hf_secret"}

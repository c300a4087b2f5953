"""Backup and restore of what cannot be re-created by scanning MODELS_DIR.

A backup lists the models (paths, sizes, where each file came from), the presets, the aliases and
every known source repo. Restoring merges presets and aliases without overwriting what exists, and
queues downloads for missing model files whose source is known; what it cannot bring back is
reported, never silently dropped.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlmodel import select

from llamaman.hub import DownloadError
from llamaman.tables import ModelSource

if TYPE_CHECKING:
    from llamaman.services import Services

BACKUP_FORMAT = 1


class BackupError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _load_sources(services: Services) -> dict[str, ModelSource]:
    with services.db.session() as s:
        return {src.model_path: src for src in s.exec(select(ModelSource))}


def _add_sources(services: Services, sources: list[ModelSource]) -> int:
    added = 0
    with services.db.session() as s:
        for src in sources:
            if s.get(ModelSource, src.model_path) is None:
                s.add(src)
                added += 1
        s.commit()
    return added


def _source_dict(src: ModelSource) -> dict[str, str]:
    return src.model_dump(include={"model_path", "repo_id", "filename", "revision"})


async def export_backup(services: Services) -> dict[str, Any]:
    entries = await services.library.ascan()
    sources = await asyncio.to_thread(_load_sources, services)
    models = []
    for e in entries:
        files = e.parts or [e.rel_path]
        models.append(
            {
                "path": e.rel_path,
                "name": e.name,
                "kind": e.kind,
                "size_bytes": e.size_bytes,
                "files": files,
                "mmproj": e.mmproj,
                "sources": {f: _source_dict(sources[f]) for f in files if f in sources},
            }
        )
    return {
        "llamaman_backup": BACKUP_FORMAT,
        "created_at": time.time(),
        "models": models,
        "presets": await services.presets.all(),
        "aliases": dict(services.aliases.aliases),
        "sources": [_source_dict(s) for s in sources.values()],
    }


def _parse_sources(data: dict[str, Any]) -> dict[str, ModelSource]:
    rows = list(data.get("sources") or [])
    for m in data.get("models") or []:
        if isinstance(m, dict) and isinstance(m.get("sources"), dict):
            rows += list(m["sources"].values())
    out: dict[str, ModelSource] = {}
    for row in rows:
        if not isinstance(row, dict):
            continue
        try:
            src = ModelSource.model_validate(row)
        except ValidationError:
            continue
        out[src.model_path] = src
    return out


def _dest_for(model_path: str, filename: str) -> str | None:
    """The folder a file must land in to come back at ``model_path`` (None: the repo's default)."""
    path, name = PurePosixPath(model_path), PurePosixPath(filename)
    if len(path.parts) <= len(name.parts) or path.parts[-len(name.parts) :] != name.parts:
        return None
    return str(PurePosixPath(*path.parts[: -len(name.parts)]))


async def restore_backup(services: Services, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("llamaman_backup"), int):
        raise BackupError("not a LlamaMan backup (the 'llamaman_backup' format number is missing)")
    if data["llamaman_backup"] > BACKUP_FORMAT:
        raise BackupError(f"backup format {data['llamaman_backup']} is newer than this LlamaMan understands")
    report: dict[str, Any] = {
        "presets_restored": [],
        "presets_merged": [],
        "preset_errors": [],
        "aliases_restored": [],
        "sources_restored": 0,
        "models_present": [],
        "downloads_queued": [],
        "not_restorable": [],
    }
    sources = _parse_sources(data)
    known = await asyncio.to_thread(_load_sources, services)
    report["sources_restored"] = await asyncio.to_thread(_add_sources, services, list(sources.values()))
    sources = {**sources, **known}

    presets = data.get("presets") or {}
    if isinstance(presets, dict):
        for path, values in presets.items():
            if not isinstance(values, dict):
                continue
            existed = await services.presets.get(path) is not None
            try:
                await services.presets.put(path, values, merge=True)
            except ValidationError as exc:
                report["preset_errors"].append({"model_path": path, "error": str(exc)})
                continue
            report["presets_merged" if existed else "presets_restored"].append(path)

    aliases = data.get("aliases") or {}
    if isinstance(aliases, dict):
        for alias, target in aliases.items():
            if isinstance(target, str) and alias not in services.aliases.aliases:
                await services.aliases.put(alias, target)
                report["aliases_restored"].append(alias)

    root = services.library.models_dir
    for model in data.get("models") or []:
        if not isinstance(model, dict) or not isinstance(model.get("path"), str):
            continue
        files = [f for f in model.get("files") or [model["path"]] if isinstance(f, str)]
        missing = [f for f in files if not (root / f).exists()]
        if not missing:
            report["models_present"].append(model["path"])
            continue
        unknown = [f for f in missing if f not in sources]
        if unknown:
            report["not_restorable"].append(
                {"path": model["path"], "reason": "the model file is missing and its source is unknown"}
            )
            continue
        await _queue_missing(services, model["path"], [sources[f] for f in missing], report)
    return report


async def _queue_missing(
    services: Services, path: str, missing: list[ModelSource], report: dict[str, Any]
) -> None:
    groups: dict[tuple[str, str, str | None], list[str]] = {}
    for src in missing:
        key = (src.repo_id, src.revision, _dest_for(src.model_path, src.filename))
        groups.setdefault(key, []).append(src.filename)
    for (repo_id, revision, dest), names in groups.items():
        job = None
        for rev in dict.fromkeys((revision, "main")):
            try:
                job = await services.downloads.create(
                    repo_id, files=names, revision=rev, dest_dir=dest, attach=True
                )
                break
            except DownloadError as exc:
                # The pinned commit may be gone from a rewritten history; the branch head may still do.
                if exc.status == 404 and rev != "main":
                    continue
                report["not_restorable"].append({"path": path, "reason": exc.message})
                break
        if job is not None:
            queued = {"id": job.id, "path": path, "repo_id": repo_id, "files": names}
            report["downloads_queued"].append(queued)

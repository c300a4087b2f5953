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

from llamaman.core.errors import Invalid, NotFound
from llamaman.core.tables import ModelSource
from llamaman.downloads.hub import DownloadError
from llamaman.gateway.errors import describe_validation
from llamaman.library.catalog import LibraryError
from llamaman.scheduling.presets import validate_preset

if TYPE_CHECKING:
    from llamaman.services import Services

BACKUP_FORMAT = 1


class BackupError(Invalid):
    """A backup this LlamaMan cannot read."""


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


# ---- validation: everything is checked before anything is written -----------------------------------
_MAX_NAME = 255
_MAX_PATH = 512


def _refuse(where: str, problem: str) -> BackupError:
    return BackupError(f"{where}: {problem}")


def _rel_path(value: Any, where: str, services: Services, *, limit: int = _MAX_PATH) -> str:
    """A path relative to MODELS_DIR that stays inside it: no '..', no absolute path, no backslash."""
    if not isinstance(value, str) or not value.strip():
        raise _refuse(where, "must be a non-empty string (a path relative to the models folder)")
    if len(value) > limit:
        raise _refuse(where, f"is longer than {limit} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or "\\" in value:
        raise _refuse(where, "may not contain control characters or backslashes")
    if PurePosixPath(value).is_absolute():
        raise _refuse(where, f"'{value}' must be relative to the models folder")
    try:
        # The library's own check: no '..', nothing that resolves outside the models folder.
        services.library.safe_path(value)
    except (LibraryError, ValueError, OSError) as exc:
        raise _refuse(where, str(exc)) from None
    return value


def _mapping(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _refuse(key, "must be an object")
    return value


def _sequence(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _refuse(where, "must be a list")
    return value


def _source(row: Any, where: str, services: Services) -> ModelSource:
    if not isinstance(row, dict):
        raise _refuse(where, "must be an object with model_path, repo_id, filename and revision")
    _rel_path(row.get("model_path"), f"{where}.model_path", services)
    _rel_path(row.get("filename"), f"{where}.filename", services, limit=1024)
    try:
        src = ModelSource.model_validate(row)
    except ValidationError as exc:
        raise _refuse(where, describe_validation(list(exc.errors()))) from None
    for field, limit in (("repo_id", _MAX_NAME), ("revision", 64)):
        value = getattr(src, field)
        if not isinstance(value, str) or not value.strip() or len(value) > limit:
            raise _refuse(f"{where}.{field}", f"must be a non-empty string of at most {limit} characters")
    return src


def _parse_sources(
    data: dict[str, Any], models: list[dict[str, Any]], services: Services
) -> dict[str, ModelSource]:
    out: dict[str, ModelSource] = {}
    for i, row in enumerate(_sequence(data.get("sources"), "sources")):
        src = _source(row, f"sources[{i}]", services)
        out[src.model_path] = src
    for i, m in enumerate(models):
        for name, row in _mapping(m, "sources").items():
            src = _source(row, f"models[{i}].sources['{name}']", services)
            out[src.model_path] = src
    return out


def _parse_models(data: dict[str, Any], services: Services) -> list[dict[str, Any]]:
    models: list[dict[str, Any]] = []
    for i, m in enumerate(_sequence(data.get("models"), "models")):
        if not isinstance(m, dict):
            raise _refuse(f"models[{i}]", "must be an object")
        path = _rel_path(m.get("path"), f"models[{i}].path", services)
        raw_files = m.get("files")
        files = [path] if raw_files is None else _sequence(raw_files, f"models[{i}].files")
        clean = [_rel_path(f, f"models[{i}].files[{j}]", services) for j, f in enumerate(files)]
        if not isinstance(m.get("sources"), dict | None):
            raise _refuse(f"models[{i}].sources", "must be an object")
        models.append({**m, "path": path, "files": clean or [path]})
    return models


def _parse_presets(data: dict[str, Any], services: Services) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path, values in _mapping(data, "presets").items():
        where = f"presets['{str(path)[:80]}']"
        _rel_path(path, where, services)
        if not isinstance(values, dict):
            raise _refuse(where, "must be an object of launch settings")
        try:
            validate_preset(values)
        except ValidationError as exc:
            raise _refuse(where, describe_validation(list(exc.errors()))) from None
        except (TypeError, ValueError) as exc:
            raise _refuse(where, str(exc)) from None
        out[path] = values
    return out


def _parse_aliases(data: dict[str, Any], services: Services) -> dict[str, str]:
    out: dict[str, str] = {}
    for alias, target in _mapping(data, "aliases").items():
        where = f"aliases['{str(alias)[:80]}']"
        if not alias.strip() or len(alias) > _MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in alias):
            raise _refuse(where, f"an alias is a name of 1 to {_MAX_NAME} printable characters")
        if not isinstance(target, str) or not target.strip() or len(target) > _MAX_PATH:
            raise _refuse(where, "the target must be the name or path of a model")
        if services.library.find(alias) is not None:
            # An alias named like a model would take that name over (and with it, model allow-lists).
            raise _refuse(
                where, f"'{alias}' is the name of a model in the library; an alias may not shadow it"
            )
        out[alias] = target
    return out


def _dest_for(model_path: str, filename: str) -> str | None:
    """The folder a file must land in to come back at ``model_path`` (None: the repo's default)."""
    path, name = PurePosixPath(model_path), PurePosixPath(filename)
    if len(path.parts) <= len(name.parts) or path.parts[-len(name.parts) :] != name.parts:
        return None
    return str(PurePosixPath(*path.parts[: -len(name.parts)]))


async def restore_backup(services: Services, data: Any) -> dict[str, Any]:
    """Check the whole backup first (400 naming the first bad field), then write: nothing is stored
    from a backup that is refused."""
    if not isinstance(data, dict):
        raise BackupError("not a LlamaMan backup (expected a JSON object)")
    version = data.get("llamaman_backup")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BackupError("not a LlamaMan backup (the 'llamaman_backup' format number is missing)")
    if version > BACKUP_FORMAT or version < 1:
        raise BackupError(f"backup format {version} is not one this LlamaMan understands")
    await services.library.ascan()  # aliases are checked against the models there are now
    models = _parse_models(data, services)
    sources = _parse_sources(data, models, services)
    presets = _parse_presets(data, services)
    aliases = _parse_aliases(data, services)

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
    known = await asyncio.to_thread(_load_sources, services)
    report["sources_restored"] = await asyncio.to_thread(_add_sources, services, list(sources.values()))
    sources = {**sources, **known}

    for path, values in presets.items():
        existed = await services.presets.get(path) is not None
        await services.presets.put(path, values, merge=True)
        report["presets_merged" if existed else "presets_restored"].append(path)

    for alias, target in aliases.items():
        if alias not in services.aliases.aliases:
            await services.aliases.put(alias, target)
            report["aliases_restored"].append(alias)

    root = services.library.models_dir
    for model in models:
        files = model["files"]
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
                if isinstance(exc, NotFound) and rev != "main":
                    continue
                report["not_restorable"].append({"path": path, "reason": exc.message})
                break
        if job is not None:
            queued = {"id": job.id, "path": path, "repo_id": repo_id, "files": names}
            report["downloads_queued"].append(queued)

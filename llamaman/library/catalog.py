"""The model library: GGUF files and Hugging Face folders under MODELS_DIR.

Scanning is blocking file IO; the async side calls :meth:`ModelLibrary.ascan`. Parsed headers are
cached by (path, size, mtime_ns), so a rescan of an unchanged folder only stats files.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamaman.library.gguf_meta import (
    GGUFInfo,
    LibraryError,
    NotInLibrary,
    info_from_header,
    merge_parts,
    read_header,
)
from llamaman.library.memory_estimate import MemoryEstimate, estimate_memory

__all__ = [
    "GGUFInfo",
    "HFInfo",
    "LibraryError",
    "MemoryEstimate",
    "ModelEntry",
    "ModelLibrary",
    "estimate_memory",
]

_PART_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
_WEIGHT_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth")


# Linux's limits for a whole path and for one name in it.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


@dataclass
class HFInfo:
    architectures: list[str] = field(default_factory=list)
    model_type: str | None = None
    num_hidden_layers: int | None = None
    max_position_embeddings: int | None = None
    torch_dtype: str | None = None


@dataclass
class ModelEntry:
    name: str
    rel_path: str
    path: Path
    kind: str = "gguf"  # "gguf" | "hf"
    size_bytes: int = 0
    modified_at: float = 0.0
    parts: list[str] = field(default_factory=list)
    mmproj: str | None = None
    capabilities: list[str] = field(default_factory=list)
    info: GGUFInfo | None = None
    hf: HFInfo | None = None
    error: str | None = None

    @property
    def launchable(self) -> bool:
        return self.kind == "gguf" and self.error is None and self.info is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rel_path": self.rel_path,
            "path": str(self.path),
            "kind": self.kind,
            "size_bytes": self.size_bytes,
            "modified_at": self.modified_at,
            "parts": list(self.parts),
            "mmproj": self.mmproj,
            "capabilities": list(self.capabilities),
            "info": self.info.to_dict() if self.info else None,
            "hf": asdict(self.hf) if self.hf else None,
            "error": self.error,
            "launchable": self.launchable,
        }


def _is_projector_name(filename: str) -> bool:
    return "mmproj" in filename.lower()


def _projector_rank(filename: str) -> tuple[int, str]:
    # Several precisions of one projector are common; f16 is what llama.cpp's docs use.
    low = filename.lower()
    for rank, tag in enumerate(("f16", "bf16", "q8", "f32")):
        if tag in low:
            return rank, low
    return 4, low


class ModelLibrary:
    def __init__(self, models_dir: Path) -> None:
        # Absolute but not symlink-resolved, so callers can relative_to() paths we hand out.
        self.models_dir = Path(os.path.abspath(Path(models_dir).expanduser()))
        self.models: list[ModelEntry] = []
        # Files actually parsed; tests read it to prove rescans are served from the cache.
        self.file_reads = 0
        self._cache: dict[str, tuple[tuple[int, int], GGUFInfo | str]] = {}
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        """The models folder with symlinks resolved: what containment is checked against."""
        return self.models_dir.resolve()

    # -- scanning ---------------------------------------------------------------------------------

    def scan(self) -> list[ModelEntry]:
        with self._lock:
            base = self.models_dir
            entries: list[ModelEntry] = []
            seen: set[str] = set()
            if base.is_dir():
                for dirpath, dirnames, filenames in os.walk(base):
                    # Hidden folders hold download caches and git internals, never models.
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    folder = Path(dirpath)
                    ggufs = sorted(
                        f for f in filenames if f.lower().endswith(".gguf") and not f.startswith(".")
                    )
                    if ggufs:
                        entries += self._scan_folder(base, folder, ggufs, seen)
                    if (
                        folder != base
                        and "config.json" in filenames
                        and any(f.endswith(".safetensors") for f in filenames)
                    ):
                        entries.append(self._hf_entry(base, folder))
            for key in [k for k in self._cache if k not in seen]:
                self._cache.pop(key, None)
            entries.sort(key=lambda e: (e.name.casefold(), e.name, e.rel_path))
            self.models = entries
            return list(entries)

    async def ascan(self) -> list[ModelEntry]:
        return await asyncio.to_thread(self.scan)

    def _scan_folder(self, base: Path, folder: Path, files: list[str], seen: set[str]) -> list[ModelEntry]:
        projectors = [f for f in files if _is_projector_name(f)]
        groups: dict[tuple[str, int], dict[int, str]] = {}
        singles: list[str] = []
        for f in files:
            if f in projectors:
                continue
            if m := _PART_RE.match(f):
                groups.setdefault((m["stem"], int(m["total"])), {})[int(m["no"])] = f
            else:
                singles.append(f)
        entries: list[ModelEntry] = []
        for f in singles:
            entry = self._gguf_entry(base, Path(f).stem, [folder / f], [], seen)
            # A projector without "mmproj" in its name is still recognisable by its architecture.
            if entry.info is not None and entry.info.architecture == "clip":
                projectors.append(f)
            else:
                entries.append(entry)
        for (stem, total), found in groups.items():
            missing = [n for n in range(1, total + 1) if n not in found]
            paths = [folder / found[n] for n in sorted(found)]
            entries.append(self._gguf_entry(base, stem, paths, missing, seen, total))
        # In the models root unrelated files sit side by side, so a projector there is only
        # paired when it has exactly one model to belong to.
        if projectors and (folder != base or len(entries) == 1):
            best = min(projectors, key=_projector_rank)
            rel = (folder / best).relative_to(base).as_posix()
            for e in entries:
                if e.info is not None and not e.info.is_embedding:
                    e.mmproj = rel
                    e.capabilities = _capabilities(e.info, rel)
        return entries

    def _gguf_entry(
        self, base: Path, name: str, paths: list[Path], missing: list[int], seen: set[str], total: int = 1
    ) -> ModelEntry:
        entry = ModelEntry(
            name=name,
            rel_path=paths[0].relative_to(base).as_posix(),
            path=paths[0],
            parts=[p.relative_to(base).as_posix() for p in paths] if total > 1 else [],
        )
        root = self.root
        infos: list[GGUFInfo] = []
        try:
            for p in paths:
                st = p.stat()
                entry.size_bytes += st.st_size
                entry.modified_at = max(entry.modified_at, st.st_mtime)
                if not p.resolve().is_relative_to(root):
                    raise LibraryError("links outside the models folder")
                seen.add(str(p))
                infos.append(self._read_cached(p, st.st_size, st.st_mtime_ns))
        except OSError as e:
            entry.error = f"cannot read file: {e.strerror or e}"
            return entry
        except LibraryError as e:
            entry.error = str(e) if len(paths) == 1 else f"{p.name}: {e}"
            return entry
        entry.info = infos[0] if len(infos) == 1 else merge_parts(infos)
        entry.capabilities = _capabilities(entry.info, None)
        if missing:
            entry.error = f"missing part{'s' if len(missing) > 1 else ''} " + ", ".join(
                f"{n} of {total}" for n in missing
            )
        return entry

    def _hf_entry(self, base: Path, folder: Path) -> ModelEntry:
        entry = ModelEntry(
            name=folder.name, rel_path=folder.relative_to(base).as_posix(), path=folder, kind="hf"
        )
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                try:
                    st = (Path(dirpath) / f).stat()
                except OSError:
                    continue
                entry.size_bytes += st.st_size
                entry.modified_at = max(entry.modified_at, st.st_mtime)
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            if not isinstance(config, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as e:
            entry.error = f"unreadable config.json ({e})"
            return entry
        # Multimodal configs nest the language model's numbers under text_config.
        nested = config.get("text_config")
        text: dict[str, Any] = nested if isinstance(nested, dict) else {}

        def pick(key: str) -> Any:
            value = config.get(key, text.get(key))
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        archs = config.get("architectures")
        entry.hf = HFInfo(
            architectures=[a for a in archs if isinstance(a, str)] if isinstance(archs, list) else [],
            model_type=config.get("model_type") if isinstance(config.get("model_type"), str) else None,
            num_hidden_layers=pick("num_hidden_layers"),
            max_position_embeddings=pick("max_position_embeddings"),
            torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "") or None,
        )
        return entry

    # -- metadata ---------------------------------------------------------------------------------

    def _read_cached(self, path: Path, size: int, mtime_ns: int) -> GGUFInfo:
        key = str(path)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == (size, mtime_ns):
            result = hit[1]
        else:
            self.file_reads += 1
            try:
                result = info_from_header(read_header(path), mtime_ns / 1e9)
            except LibraryError as e:
                result = str(e)
            # Failures are cached too: a broken 40 GB download should not be re-parsed every scan.
            self._cache[key] = ((size, mtime_ns), result)
        if isinstance(result, str):
            raise LibraryError(result)
        return result

    def read_info(self, path: Path) -> GGUFInfo:
        path = Path(path)
        if not path.is_absolute():
            path = self.models_dir / path
        try:
            st = path.stat()
        except OSError as e:
            raise LibraryError(f"cannot read {path.name}: {e.strerror or e}") from e
        return self._read_cached(path, st.st_size, st.st_mtime_ns)

    def model_info_kv(self, entry: ModelEntry) -> dict[str, Any]:
        """GGUF key/values for Ollama's /api/show ``model_info``; long arrays read as None."""
        if entry.info is None:
            return {}
        out: dict[str, Any] = {}
        for key, value in entry.info.metadata.items():
            out[key] = _json_safe(value)
        out["general.parameter_count"] = entry.info.parameter_count
        return out

    # -- lookup and paths -------------------------------------------------------------------------

    def find(self, name: str) -> ModelEntry | None:
        name = name.strip()
        if not name:
            return None
        wanted = [name]
        if name.endswith(":latest"):
            wanted.append(name.removesuffix(":latest"))
        models = self.models
        for fold in (False, True):
            for w in wanted:
                w = w.casefold() if fold else w
                hits = [
                    e
                    for e in models
                    if any(
                        (k.casefold() if fold else k) == w
                        for k in (e.name, e.rel_path, _rel_stem(e), str(e.path))
                    )
                ]
                # A GGUF and an HF folder may share a name; the one llama-server can run wins.
                if hits:
                    return next((e for e in hits if e.launchable), hits[0])
        return None

    def safe_path(self, p: str) -> Path:
        """Resolve a user-given path, guaranteeing it stays inside the models folder.

        The result is spelled under ``models_dir`` with in-folder symlinks unresolved: llama.cpp
        finds the other parts of a split model by the file name it was given, which a
        content-addressed blob name lacks.
        """
        if not p or not p.strip():
            raise LibraryError("empty path")
        if "\x00" in p:
            raise LibraryError("invalid path (NUL byte)")
        raw = Path(p.strip())
        # Names the file system cannot hold would fail later as OSError (ENAMETOOLONG); say so here.
        if len(p.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES or any(
            len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in raw.parts
        ):
            raise LibraryError("path too long")
        if ".." in raw.parts:
            raise LibraryError(f"'{p}': '..' is not allowed in model paths")
        base, root = self.models_dir, self.root
        candidate = base / raw
        if raw.is_absolute():
            for prefix in (base, root):
                if raw.is_relative_to(prefix):
                    candidate = base / raw.relative_to(prefix)
                    break
        if not candidate.resolve().is_relative_to(root):
            raise LibraryError(f"'{p}' is outside the models folder")
        return candidate

    def _entry_for(self, target: Path) -> ModelEntry | None:
        for e in self.models:
            if e.path == target or any(self.models_dir / r == target for r in e.parts):
                return e
        return None

    def delete(self, rel_path: str) -> list[str]:
        """Delete a model's file(s); returns the removed paths relative to the models folder."""
        base = self.models_dir
        target = self.safe_path(rel_path)
        if target.resolve() == self.root:
            raise LibraryError("refusing to delete the models folder itself")
        entry = self._entry_for(target)
        if entry is None:
            self.scan()
            entry = self._entry_for(target)
        if entry is None:
            raise NotInLibrary(f"'{rel_path}' not found in the model library")
        removed: list[str] = []
        if entry.kind == "hf":
            shutil.rmtree(entry.path)
            removed.append(entry.rel_path)
        else:
            for rel in entry.parts or [entry.rel_path]:
                (base / rel).unlink(missing_ok=True)
                removed.append(rel)
            if entry.mmproj:
                removed += self._drop_orphan_projectors(base, (base / entry.mmproj).parent)
        with self._lock:
            self.models = [m for m in self.models if m is not entry]
        return removed

    def _drop_orphan_projectors(self, base: Path, folder: Path) -> list[str]:
        if folder == base or not folder.is_dir():
            return []
        files = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
        if any(f.name.lower().endswith(_WEIGHT_SUFFIXES) and not _is_projector_name(f.name) for f in files):
            return []
        removed: list[str] = []
        for f in files:
            if _is_projector_name(f.name) and f.name.lower().endswith(".gguf"):
                f.unlink(missing_ok=True)
                removed.append(f.relative_to(base).as_posix())
        if not any(folder.iterdir()):
            folder.rmdir()
        return removed

    def layers(self, p: str) -> int:
        """Block count of the model at ``p`` (a path, or failing that a model name)."""
        target = self.safe_path(p)
        entry = self._entry_for(target)
        if entry is None and target.exists():
            # Added since the last scan: a later part of a split model has no metadata of its own.
            self.scan()
            entry = self._entry_for(target)
        if entry is None and not target.exists():
            entry = self.find(p)
            if entry is None:
                raise NotInLibrary(f"'{p}' not found in the models folder")
        if entry is not None and entry.kind == "hf":
            if entry.hf and entry.hf.num_hidden_layers:
                return entry.hf.num_hidden_layers
            raise LibraryError(f"'{p}' has no num_hidden_layers in config.json")
        if entry is not None and entry.error and entry.info is None:
            raise LibraryError(f"'{p}': {entry.error}")
        info = entry.info if entry is not None and entry.info else self.read_info(target)
        if info.block_count is None:
            raise LibraryError(f"'{p}' has no block count in its metadata")
        return info.block_count


def _rel_stem(e: ModelEntry) -> str:
    # "org/model" for org/model.gguf, and "org/model" for org/model-00001-of-00003.gguf too.
    return (Path(e.rel_path).parent / e.name).as_posix()


def _capabilities(info: GGUFInfo, mmproj: str | None) -> list[str]:
    if info.is_embedding:
        return ["embedding"]
    caps = ["completion"]
    if mmproj:
        caps.append("vision")
    if info.has_tools:
        caps.append("tools")
    return caps


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value

"""Which files an instance runs: the model and its vision projector, checked to stay in MODELS_DIR."""

from __future__ import annotations

import contextlib
from pathlib import Path

from llamaman.instances.instance import InstanceInvalid, InstanceNotFound
from llamaman.instances.launch import LaunchSettings
from llamaman.library.catalog import LibraryError, ModelLibrary


def resolve_model(library: ModelLibrary, ls: LaunchSettings) -> tuple[Path, str, str | None]:
    """The model file, its display name and its projector, all inside MODELS_DIR, or InstanceError."""
    try:
        path = library.safe_path(ls.model_path)
    except LibraryError as exc:
        raise InstanceInvalid(str(exc)) from None
    if not path.is_file():
        raise InstanceNotFound(f"model file not found: {ls.model_path}")
    if path.suffix.lower() != ".gguf":
        raise InstanceInvalid(f"{ls.model_path} is not a GGUF file; llama-server needs .gguf")
    mmproj = None
    if ls.mmproj:
        try:
            mp = library.safe_path(ls.mmproj)
        except LibraryError as exc:
            raise InstanceInvalid(f"mmproj: {exc}") from None
        if not mp.is_file():
            raise InstanceNotFound(f"mmproj file not found: {ls.mmproj}")
        mmproj = str(mp)
    else:
        entry = library.find(relative_to(library, path))
        if entry is not None and entry.mmproj:
            # A projector found beside the model is used only if it, too, stays in the folder.
            with contextlib.suppress(LibraryError):
                mmproj = str(library.safe_path(entry.mmproj))
    return path, _model_name(library, path), mmproj


def relative_to(library: ModelLibrary, path: Path) -> str:
    return path.relative_to(library.models_dir).as_posix()


def _model_name(library: ModelLibrary, path: Path) -> str:
    entry = library.find(relative_to(library, path))
    return entry.name if entry is not None else path.stem

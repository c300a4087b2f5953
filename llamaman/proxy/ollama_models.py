"""The model side of the Ollama API: ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/copy`` and
``/api/delete``.

Names: a model is listed under its file stem, the way users refer to it, unless two files share a
stem; then each is listed under its path in MODELS_DIR (``org/model``) so every listed name
resolves to exactly one file.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from llamaman.core.identity import Identity
from llamaman.core.state import InstanceState
from llamaman.instances.supervisor import ManagedInstance
from llamaman.library.catalog import ModelEntry
from llamaman.library.gguf_meta import LibraryError
from llamaman.proxy.cluster_models import merge_tags
from llamaman.proxy.common import ProxyError
from llamaman.proxy.openai import may_list
from llamaman.proxy.translate import digest_for, format_rfc3339, ollama_model_name, strip_latest
from llamaman.scheduling.router import ModelNotFound
from llamaman.services import Services

# What Ollama reports for a model kept loaded forever: now plus Go's largest time.Duration.
_FOREVER_S = (2**63 - 1) / 1e9

# Ollama lists capabilities in this order; clients only test membership, but stable output diffs well.
_CAPABILITY_ORDER = ("completion", "tools", "insert", "vision", "embedding", "thinking")
# Chat templates that can switch reasoning on carry one of these.
_THINKING_MARKERS = ("<think>", "enable_thinking", "reasoning_content", "thinking")


async def resolve(services: Services, name: str) -> ModelEntry:
    """The launchable model (or alias target) a client names; 404 in Ollama's words otherwise."""
    try:
        return await services.router.aresolve(name)
    except ModelNotFound as exc:
        raise ProxyError.of(exc, f"model '{name}' not found") from None


# -- naming -----------------------------------------------------------------------------------------


class Names:
    """Listing names for the library's launchable models, computed once per request."""

    def __init__(self, models: list[ModelEntry]) -> None:
        self._counts = Counter(e.name.casefold() for e in models if e.launchable)

    def of(self, entry: ModelEntry) -> str:
        if self._counts[entry.name.casefold()] > 1:
            return (Path(entry.rel_path).parent / entry.name).as_posix()
        return entry.name


def digest(entry: ModelEntry) -> str:
    # Hashing gigabytes per listing is out of the question; identity (path, size, mtime) is stable
    # until the file changes, which is all clients use the digest for.
    return digest_for(entry.rel_path, entry.size_bytes, round(entry.modified_at * 1e9))


def details(entry: ModelEntry) -> dict[str, Any]:
    info = entry.info
    family = (info.architecture if info else None) or ""
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family] if family else [],
        "parameter_size": info.parameter_size if info else "",
        "quantization_level": (info.quantization if info else None) or "",
    }


def _model_object(name: str, entry: ModelEntry) -> dict[str, Any]:
    full = ollama_model_name(name)
    return {
        "name": full,
        "model": full,
        "modified_at": format_rfc3339(entry.modified_at),
        "size": entry.size_bytes,
        "digest": digest(entry),
        "details": details(entry),
    }


# -- /api/tags --------------------------------------------------------------------------------------


async def tags(services: Services, identity: Identity | None = None) -> dict[str, Any]:
    """The library and its aliases; a key limited to some models sees only those."""
    # A file dropped into MODELS_DIR should show up on the client's next page load; rescans only
    # stat unchanged files.
    models = await services.library.ascan()
    names = Names(models)
    listed_names = [(names.of(e), e) for e in models if e.launchable]
    listed = {ollama_model_name(n).casefold() for n, _ in listed_names}
    out = [_model_object(n, e) for n, e in listed_names if may_list(identity, e, n)]
    for alias, target in sorted(services.aliases.aliases.items()):
        entry = services.library.find(target)
        if entry is None or not entry.launchable or ollama_model_name(alias).casefold() in listed:
            continue
        if may_list(identity, entry, alias):
            out.append(_model_object(alias, entry))
    merge_tags(services, out, identity)
    return {"models": out}


# -- /api/ps ----------------------------------------------------------------------------------------


def effective_ctx(m: ManagedInstance, entry: ModelEntry | None) -> int:
    """Tokens one request can use on ``m``."""
    return m.settings.request_ctx(entry.info.context_length if entry and entry.info else None)


def _memory(services: Services, m: ManagedInstance, entry: ModelEntry) -> tuple[int, int]:
    """(total, VRAM) bytes the instance holds: what the scheduler accounts it (its footprint)."""
    usage = services.router.usage_of(m)
    return sum(usage.values()), sum(b for d, b in usage.items() if d != "cpu")


def _expires_at(services: Services, m: ManagedInstance) -> float:
    router = services.router
    slot = router.slots.get(m.id)
    if slot is not None and slot.unload_after:
        return time.time()
    # The router's counters cannot express "forever"; its slot can.
    if slot is not None and slot.keep_alive_until is not None and math.isinf(slot.keep_alive_until):
        return time.time() + _FOREVER_S
    expires = router.counters(m).get("expires_at")
    return float(expires) if expires is not None else time.time() + _FOREVER_S


def ps(services: Services, identity: Identity | None = None) -> dict[str, Any]:
    """The running models; a key limited to some models sees only those."""
    library = services.library
    names = Names(library.models)
    grouped: dict[str, list[tuple[ManagedInstance, ModelEntry]]] = {}
    for m in services.supervisor.list():
        if m.state != InstanceState.HEALTHY:
            continue
        entry = library.find(m.record.model_path)
        if entry is not None and entry.launchable and may_list(identity, entry, names.of(entry)):
            grouped.setdefault(entry.rel_path, []).append((m, entry))
    out = []
    # Replicas of one model make one entry, as Ollama has one runner per model.
    for group in grouped.values():
        entry = group[0][1]
        obj = _model_object(names.of(entry), entry)
        del obj["modified_at"]
        memory = [_memory(services, m, entry) for m, _ in group]
        obj["size"] = sum(total for total, _ in memory)
        obj["size_vram"] = sum(vram for _, vram in memory)
        obj["expires_at"] = format_rfc3339(max(_expires_at(services, m) for m, _ in group))
        obj["context_length"] = max(effective_ctx(m, entry) for m, _ in group)
        out.append(obj)
    return {"models": out}


# -- /api/show --------------------------------------------------------------------------------------


def capabilities(entry: ModelEntry) -> list[str]:
    caps = set(entry.capabilities)
    info = entry.info
    if info is not None and "completion" in caps:
        if "tokenizer.ggml.fim_pre_token_id" in info.metadata:
            caps.add("insert")
        template = info.chat_template or ""
        if any(marker in template for marker in _THINKING_MARKERS):
            caps.add("thinking")
    return [c for c in _CAPABILITY_ORDER if c in caps]


def _running(services: Services, entry: ModelEntry) -> list[ManagedInstance]:
    return [
        m
        for m in services.supervisor.list()
        if m.record.model_path == entry.rel_path and m.state == InstanceState.HEALTHY
    ]


def _parameters(values: dict[str, Any]) -> str:
    # Ollama's layout: the name padded to a column, then the value.
    return "\n".join(f"{key:<30} {value}" for key, value in values.items())


async def show(services: Services, name: str) -> dict[str, Any]:
    entry = await resolve(services, name)
    info = entry.info
    assert info is not None  # resolve() only returns launchable entries
    running = _running(services, entry)
    preset = await services.presets.get(entry.rel_path) or {}
    ctx = max((effective_ctx(m, entry) for m in running), default=0) or info.context_length or 0

    model_info = services.library.model_info_kv(entry)
    if info.architecture and ctx:
        model_info[f"{info.architecture}.context_length"] = ctx

    params: dict[str, Any] = {}
    if running or preset.get("ctx_size"):
        params["num_ctx"] = ctx if running else preset["ctx_size"]
    sampling = running[0].settings.sampling.active() if running else dict(preset.get("sampling") or {})
    params.update({k: v for k, v in sampling.items() if v is not None})

    template = info.chat_template or ""
    modelfile = [f"# Modelfile generated by LlamaMan for {ollama_model_name(name)}", f"FROM {entry.rel_path}"]
    if template:
        modelfile.append(f'TEMPLATE """{template}"""')
    modelfile += [f"PARAMETER {key} {value}" for key, value in params.items()]

    out: dict[str, Any] = {
        "modelfile": "\n".join(modelfile) + "\n",
        "parameters": _parameters(params),
        "template": template,
        "details": details(entry),
        "model_info": model_info,
        "capabilities": capabilities(entry),
        "modified_at": format_rfc3339(entry.modified_at),
    }
    license_text = info.metadata.get("general.license")
    if isinstance(license_text, str):
        out["license"] = license_text
    return out


# -- /api/copy and /api/delete ----------------------------------------------------------------------


async def copy(services: Services, source: Any, destination: Any) -> None:
    """Ollama's copy as an alias: a second name for the same file, at no disk cost."""
    if not isinstance(source, str) or not source.strip() or not isinstance(destination, str):
        raise ProxyError(400, "copy needs a 'source' model and a 'destination' name")
    alias = strip_latest(destination.strip())
    if not alias:
        raise ProxyError(400, "copy needs a 'source' model and a 'destination' name")
    entry = await resolve(services, source.strip())
    clash = services.library.find(alias)
    if clash is not None and clash.rel_path != entry.rel_path:
        # The alias would hide that file from every client that names it.
        raise ProxyError(
            400, f"'{destination}' already names the model file {clash.rel_path}; choose another name"
        )
    await services.aliases.put(alias, entry.rel_path)
    services.events.publish("library.changed")


async def _retire_instances(services: Services, entry: ModelEntry) -> None:
    """Stop everything serving a model about to be deleted: Ollama deletes loaded models too."""
    sup = services.supervisor
    for m in sup.list():
        if m.record.model_path != entry.rel_path:
            continue
        if m.record.origin == "proxy":
            # Started on demand for this file: nothing of the user's is lost with the record.
            await sup.remove(m.id)
        elif m.state not in (InstanceState.STOPPED, InstanceState.FAILED):
            await sup.stop(m.id)


async def delete(services: Services, name: str) -> None:
    """Drop an alias, or else stop the model's instances and delete its file(s)."""
    aliases = services.aliases
    alias = next((key for key in (name, strip_latest(name)) if key in aliases.aliases), None)
    if alias is not None:
        await aliases.delete(alias)
        services.events.publish("library.changed")
        return
    library = services.library
    entry = library.find(name)
    if entry is None:
        await library.ascan()
        entry = library.find(name)
    if entry is None:
        raise ProxyError(404, f"model '{name}' not found")
    await _retire_instances(services, entry)
    try:
        await asyncio.to_thread(library.delete, entry.rel_path)
    except LibraryError as exc:
        raise ProxyError(404 if "not found" in str(exc) else 400, str(exc)) from None
    except OSError as exc:
        raise ProxyError(500, f"could not delete {entry.rel_path}: {exc.strerror or exc}") from None
    await library.ascan()
    # Names that pointed at the file would only ever answer "not found" now.
    for key, target in list(aliases.aliases.items()):
        if target == entry.rel_path or library.find(target) is None:
            await aliases.delete(key)
    services.events.publish("library.changed")

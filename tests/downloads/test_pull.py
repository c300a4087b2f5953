"""Ollama's /api/pull of Hugging Face GGUF repos, through the real ollama client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import ollama
import pytest
from fastapi import FastAPI

from llamaman.app import LlamaMan
from llamaman.downloads.hub import RemoteFile, RepoListing
from llamaman.proxy import pull as pull_module
from llamaman.proxy.pull import parse_name, pick
from llamaman.testing.fake_hub import FakeHub
from tests.downloads.conftest import ask, served


@pytest.fixture
async def client(dl: LlamaMan) -> AsyncIterator[ollama.AsyncClient]:
    app = FastAPI()
    app.state.services = dl
    app.include_router(pull_module.router)
    async with served(app) as url:
        yield ollama.AsyncClient(host=url, trust_env=False)


async def test_pull_streams_progress_then_the_model_answers(
    dl: LlamaMan, hub: FakeHub, client: ollama.AsyncClient, llama_server_bin: str
) -> None:
    parts = [p async for p in await client.pull("hf.co/user/repo:Q4_K_M", stream=True)]
    statuses = [p.status for p in parts]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    sha = hub.repos["user/repo"].sha256("tiny-Q4_K_M.gguf")
    layers = [p for p in parts if p.digest]
    assert layers and all(p.digest == f"sha256:{sha}" and p.status == f"pulling {sha[:12]}" for p in layers)
    size = len(hub.repos["user/repo"].files["tiny-Q4_K_M.gguf"])
    assert layers[-1].total == layers[-1].completed == size
    assert [r.path.rsplit("/", 1)[-1] for r in hub.file_gets()] == ["tiny-Q4_K_M.gguf"]

    lease = await dl.router.acquire("hf.co/user/repo:Q4_K_M")
    try:
        assert (await ask(lease.base_url, headers=lease.instance.proc.auth_headers)).startswith("abcdef")
    finally:
        lease.release()


async def test_pull_without_stream_and_unknown_names(dl: LlamaMan, client: ollama.AsyncClient) -> None:
    done = await client.pull("user/repo:q8_0", stream=False)
    assert done.status == "success"
    assert dl.aliases.aliases["user/repo:q8_0"] == "user/repo/tiny-Q8_0.gguf"
    assert dl.router.resolve("user/repo:q8_0") is not None

    for name in ("hf.co/user/repo:Q2_K", "hf.co/user/nope:Q4_K_M", "huggingface.co/user/nope"):
        with pytest.raises(ollama.ResponseError) as err:
            async for _ in await client.pull(name, stream=True):
                pass
        assert err.value.error == "pull model manifest: file does not exist" and err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        await client.pull("llama3", stream=False)
    assert err.value.status_code == 400 and "hf.co/" in err.value.error


def test_names_are_parsed_like_ollama_does() -> None:
    p = parse_name("hf.co/User/Repo-GGUF:Q4_K_M")
    assert (p.repo_id, p.tag, p.name) == ("User/Repo-GGUF", "Q4_K_M", "hf.co/User/Repo-GGUF:Q4_K_M")
    p = parse_name("https://huggingface.co/user/repo:latest")
    assert (p.repo_id, p.tag, p.name) == ("user/repo", None, "huggingface.co/user/repo")
    assert parse_name("user/repo:iq4_xs").tag == "iq4_xs"


def _listing(*files: tuple[str, int]) -> RepoListing:
    return RepoListing("u/r", "0" * 40, [RemoteFile(n, s) for n, s in files])


def test_quant_choice() -> None:
    repo = _listing(
        ("m-Q2_K.gguf", 10), ("m-Q4_0.gguf", 40), ("m-Q4_K_S.gguf", 42), ("m-Q4_K_M.gguf", 45),
        ("m-IQ4_XS.gguf", 38), ("mmproj-m-f16.gguf", 5), ("mmproj-m-f32.gguf", 9),
        ("Q8_0/m-Q8_0-00001-of-00002.gguf", 50), ("Q8_0/m-Q8_0-00002-of-00002.gguf", 50), ("README.md", 1),
    )  # fmt: skip
    assert pick(repo, "q4_k_m") == ["m-Q4_K_M.gguf", "mmproj-m-f16.gguf"]
    assert pick(repo, None) == ["m-Q4_K_M.gguf", "mmproj-m-f16.gguf"]
    assert pick(repo, "Q4_K") is not None and pick(repo, "Q4_K")[0] in ("m-Q4_K_M.gguf", "m-Q4_K_S.gguf")
    assert pick(repo, "Q8_0") == [
        "Q8_0/m-Q8_0-00001-of-00002.gguf", "Q8_0/m-Q8_0-00002-of-00002.gguf", "mmproj-m-f16.gguf"
    ]  # fmt: skip
    assert pick(repo, "Q5_K_M") is None
    no_default = _listing(("m-Q2_K.gguf", 10), ("m-Q4_0.gguf", 40), ("m-IQ4_XS.gguf", 38))
    assert pick(no_default, None) == ["m-IQ4_XS.gguf"]  # the smallest Q4
    assert pick(_listing(("b-F16.gguf", 9), ("a-Q8_0.gguf", 5)), None) == ["a-Q8_0.gguf"]
    assert pick(_listing(("README.md", 1)), None) is None

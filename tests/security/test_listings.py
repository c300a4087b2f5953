"""Listings fit for a shared box: a key limited to some models sees only those in every model list on
every port, and launch arguments (which can carry a Hugging Face token) are shown to admins only,
with secrets masked. Against real llama-servers, a real proxy port and real instance ports."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from llamaman.app import LlamaMan, create_app
from llamaman.auth.sessions import SESSION_COOKIE
from llamaman.core.redact import redact_argv
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.supervisor import ManagedInstance
from llamaman.proxy.app import ProxyServer

pytestmark = pytest.mark.auth

SECRET = "hf_SuperSecretToken0123456789"
LISTINGS = ("/api/tags", "/api/ps", "/v1/models", "/models")


@dataclass
class Box:
    services: LlamaMan
    proxy: ProxyServer
    a: ManagedInstance
    b: ManagedInstance
    restricted: str
    inference: str
    admin: str
    session: str


async def _launch(services: LlamaMan, model: str, extra_args: str = "") -> ManagedInstance:
    m = await services.supervisor.launch(
        LaunchSettings(model_path=model, ctx_size=512, extra_args=extra_args)
    )
    assert await m.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, 30) == InstanceState.HEALTHY
    return m


@pytest.fixture
async def box(services: LlamaMan, proxy: ProxyServer) -> AsyncIterator[Box]:
    try:
        a = await _launch(services, "tiny-a.gguf", f"--hf-token {SECRET}")
    except (ValidationError, ValueError):
        # Where launch arguments refuse the token, an instance started before that still carries it.
        a = await _launch(services, "tiny-a.gguf")
        a.proc.argv = [*a.proc.argv, "--hf-token", SECRET]
    b = await _launch(services, "tiny-b.gguf")
    await services.aliases.put("friendly", "tiny-a")
    await services.aliases.put("sneaky", "tiny-b")
    keys = services.auth.keys
    _, restricted = await keys.create("only-a", allowed_models=["tiny-a"])
    _, inference = await keys.create("open-webui")
    _, admin = await keys.create("ops", scope="admin")
    user = await services.auth.create_first_admin("admin", "a long password")
    yield Box(services, proxy, a, b, restricted, inference, admin, await services.auth.new_session(user))


@contextlib.asynccontextmanager
async def ports(box: Box) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """A client for the main port (the app in-process), the proxy port and both instance ports."""
    main = create_app(box.services, manage_lifecycle=False)
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=main), base_url="http://llamaman.test") as m,
        httpx.AsyncClient(base_url=box.proxy.url, trust_env=False, timeout=30) as p,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{box.a.record.port}", trust_env=False, timeout=30
        ) as ia,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{box.b.record.port}", trust_env=False, timeout=30
        ) as ib,
    ):
        yield {"main": m, "proxy": p, "instance-a": ia, "instance-b": ib}


def names(path: str, body: dict[str, Any]) -> set[str]:
    if path.startswith("/api/"):
        return {m["name"].removesuffix(":latest") for m in body["models"]}
    return {m["id"] for m in body["data"]}


async def test_a_restricted_key_sees_only_its_models_everywhere(box: Box) -> None:
    h = {"Authorization": f"Bearer {box.restricted}"}
    async with ports(box) as clients:
        for surface in ("main", "proxy"):
            c = clients[surface]
            for path in LISTINGS:
                r = await c.get(path, headers=h)
                assert r.status_code == 200, (surface, path, r.text)
                want = {"tiny-a"} if path == "/api/ps" else {"tiny-a", "friendly"}
                assert names(path, r.json()) == want, (surface, path, r.json())
                assert "tiny-b" not in r.text and "sneaky" not in r.text
            for hidden in ("tiny-b", "sneaky", "tiny-embed"):
                r = await c.get(f"/v1/models/{hidden}", headers=h)
                assert r.status_code == 404 and hidden in r.json()["error"]["message"]
            assert (await c.get("/v1/models/friendly", headers=h)).status_code == 200
        # Instance ports: the other model's port refuses the key, its own lists just its model.
        r = await clients["instance-b"].get("/v1/models", headers=h)
        assert r.status_code == 403
        r = await clients["instance-a"].get("/v1/models", headers=h)
        assert r.status_code == 200 and "tiny-b" not in r.text

        # A key for every model sees every model.
        h = {"x-api-key": box.inference}
        for surface in ("main", "proxy"):
            for path in LISTINGS:
                r = await clients[surface].get(path, headers=h)
                want = {"tiny-a", "tiny-b"}
                if path != "/api/ps":
                    want |= {"tiny-embed", "friendly", "sneaky"}
                assert names(path, r.json()) == want, (surface, path)


def _statuses(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["id"]: m["status"] for m in body["data"]}


async def test_launch_arguments_are_for_admins_and_masked(box: Box) -> None:
    async with ports(box) as clients:
        for surface in ("main", "proxy"):
            c = clients[surface]
            for path in ("/v1/models", "/models", "/v1/models/tiny-a"):
                # Model callers see how a model is doing, not how it was launched.
                for h in ({"Authorization": f"Bearer {box.inference}"}, {"x-api-key": box.restricted}):
                    r = await c.get(path, headers=h)
                    assert r.status_code == 200 and SECRET not in r.text and "--hf-token" not in r.text
                    objects = r.json()["data"] if "data" in r.json() else [r.json()]
                    assert all("args" not in o["status"] for o in objects), (surface, path, objects)
                    assert {o["status"]["value"] for o in objects if o["id"] == "tiny-a"} == {"loaded"}
                # Those who manage the box see the command, with the token masked.
                # (The session cookie counts on the main port only.)
                session = {"Cookie": f"{SESSION_COOKIE}={box.session}"}
                if surface != "main":
                    assert (await c.get(path, headers=session)).status_code == 401
                admin = {"Authorization": f"Bearer {box.admin}"}
                managers = [admin, session] if surface == "main" else [admin]
                for h in managers:
                    r = await c.get(path, headers=h)
                    assert r.status_code == 200 and SECRET not in r.text, (surface, path)
                    objects = r.json()["data"] if "data" in r.json() else [r.json()]
                    args = next(o["status"]["args"] for o in objects if o["id"] == "tiny-a")
                    assert args[args.index("--hf-token") + 1] == "***"
        # The instance list of the REST API (admins only) shows the command masked the same way.
        r = await clients["main"].get("/api/instances", headers={"Authorization": f"Bearer {box.admin}"})
        [command] = [i["command"] for i in r.json() if i["id"] == box.a.id]
        assert SECRET not in command and command[command.index("--hf-token") + 1] == "***"
        # Nobody at all, with require-auth off: no arguments either.
        await box.services.runtime.update({"require_auth": False})
        r = await clients["proxy"].get("/v1/models")
        assert r.status_code == 200 and "args" not in _statuses(r.json())["tiny-a"] and SECRET not in r.text
        # The instance port's own llama-server does not hand out the token either.
        for path in ("/v1/models", "/props", "/models"):
            r = await clients["instance-a"].get(path, headers={"Authorization": f"Bearer {box.admin}"})
            assert SECRET not in r.text, path


def test_secret_flag_values_are_masked_in_every_spelling() -> None:
    argv = [
        "llama-server", "-m", "/models/a.gguf", "--hf-token", SECRET, "-hft", "hf_other0123456",
        "--api-key", "plain-key", "--api-key=inline-key", "--hf-token=" + SECRET, "--alias", "a",
        "--ssl-key-file", "/etc/key.pem", "--hf-repo", "user/repo", "--model-url", "https://x/?t=llm-abcdefgh12",
    ]  # fmt: skip
    shown = redact_argv(argv)
    text = " ".join(shown)
    for secret in (SECRET, "hf_other0123456", "plain-key", "inline-key", "/etc/key.pem", "llm-abcdefgh12"):
        assert secret not in text, secret
    assert shown[:3] == ["llama-server", "-m", "/models/a.gguf"] and "--alias a" in text
    assert "--api-key=***" in shown and "--hf-token=***" in shown
    assert len(shown) == len(argv)

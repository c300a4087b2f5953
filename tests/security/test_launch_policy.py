"""Launch arguments that hand a caller more than a model are refused wherever they can come in: the
REST API, presets, backup restore, records stored before the policy, the UI's validation path; the
operator's lift variable lets them through."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.state import InstanceState
from llamaman.core.tables import Instance, Preset, new_id
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.launch_policy import (
    FLAG_KINDS,
    Kind,
    LaunchPolicyError,
    Policy,
    check_args,
    child_environment,
)
from llamaman.instances.llama_server_flags import LLAMA_SERVER_FLAGS

S = InstanceState

# extra_args → words the refusal must contain (the flag, and why).
ATTACKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tools": ("--tools all", ("--tools", "tools")),
    "tools inline": ("--tools=all", ("--tools", "tools")),
    "tools underscore": ("--tools_runtime python", ("--tools_runtime", "tools")),
    "agent short": ("-ag", ("-ag", "tools")),
    "mcp servers": ("--mcp-servers-json {}", ("--mcp-servers-json", "tools")),
    "path": ("--path /", ("--path", "serves files")),
    "path inline": ("--path=/etc", ("--path", "serves files")),
    "webui": ("--webui", ("--webui", "serves files")),
    "ui": ("--ui", ("--ui", "serves files")),
    "ui config file": ("--ui-config-file /etc/passwd", ("--ui-config-file", "serves files")),
    "media path": ("--media-path /", ("--media-path", "serves files")),
    "chat template file": ("--chat-template-file /etc/passwd", ("--chat-template-file", "outside")),
    "chat template inline": ("--chat-template-file=/etc/passwd", ("--chat-template-file", "outside")),
    "chat template underscore": ("--chat_template_file /etc/passwd", ("--chat-template-file", "outside")),
    "grammar file": ("--grammar-file /etc/hostname", ("--grammar-file", "outside")),
    "json schema short": ("-jf /etc/passwd", ("-jf", "outside")),
    "lora dot-dot": ("--lora ../../x", ("--lora", "..")),
    "lora absolute": ("--lora /etc/passwd", ("--lora", "outside")),
    "lora list": ("--lora tiny-a.gguf,/etc/passwd", ("--lora", "outside")),
    "lora scaled": ("--lora-scaled /etc/passwd:0.5", ("--lora-scaled", "outside")),
    "control vector": ("--control-vector /etc/passwd", ("--control-vector", "outside")),
    "draft model short": ("-md /etc/passwd", ("-md", "outside")),
    "mmproj flag": ("--mmproj /etc/passwd", ("--mmproj", "outside")),
    "mmproj short": ("-mm=/etc/passwd", ("-mm", "outside")),
    "log file": ("--log-file /tmp/x", ("--log-file", "writes files")),
    "log file inline": ("--log-file=/tmp/x", ("--log-file", "writes files")),
    "slot save path": ("--slot-save-path /tmp", ("--slot-save-path", "writes files")),
    "log prompts dir": ("--log-prompts-dir /tmp", ("--log-prompts-dir", "writes files")),
    "lookup cache dynamic": ("-lcd /tmp/c", ("-lcd", "writes files")),
    "rpc": ("--rpc 127.0.0.1:50052", ("--rpc", "network")),
    "hf short": ("-hf ggml-org/gemma", ("-hf", "network")),
    "hf repo": ("--hf-repo ggml-org/gemma", ("--hf-repo", "network")),
    "hf file short": ("-hff x.gguf", ("-hff", "network")),
    "model url": ("--model-url http://example.invalid/x.gguf", ("--model-url", "network")),
    "downloading preset": ("--gpt-oss-20b-default", ("--gpt-oss-20b-default", "network")),
    "mcp proxy": ("--webui-mcp-proxy", ("--webui-mcp-proxy", "network")),
    "api key": ("--api-key k", ("--api-key", "key")),
    "api key file": ("--api-key-file /etc/passwd", ("--api-key-file", "key")),
    "ssl key": ("--ssl-key-file /x", ("--ssl-key-file", "who can reach")),
    "cors": ("--cors-origins *", ("--cors-origins", "who can reach")),
    "reuse port": ("--reuse-port", ("--reuse-port", "who can reach")),
    "host": ("--host 0.0.0.0", ("--host",)),
    "port": ("--port=1", ("--port",)),
    "props": ("--props", ("--props", "run time")),
    "help": ("--help", ("--help", "exit")),
    "unknown flag": ("--no-such-flag", ("--no-such-flag", "not a llama-server flag")),
    "stray value": ("--no-webui /etc/passwd", ("unexpected value",)),
}


def test_every_llama_server_flag_is_classified() -> None:
    missing = sorted(set(LLAMA_SERVER_FLAGS) - set(FLAG_KINDS))
    assert missing == [], f"classify these flags in llamaman/instances/launch_policy.py: {missing}"
    assert set(FLAG_KINDS) <= set(LLAMA_SERVER_FLAGS)


@pytest.mark.parametrize("case", list(ATTACKS), ids=list(ATTACKS))
def test_policy_refuses_with_the_flag_and_the_reason(case: str, models_dir: Path) -> None:
    text, words = ATTACKS[case]
    import shlex

    with pytest.raises(LaunchPolicyError) as info:
        check_args(shlex.split(text), Policy(models_dir.resolve()))
    for word in words:
        assert word.lower() in str(info.value).lower(), info.value


def test_tuning_and_in_folder_files_pass_with_absolute_paths(models_dir: Path) -> None:
    (models_dir / "t.jinja").write_text("{{ messages }}")
    (models_dir / "adapters").mkdir()
    (models_dir / "adapters" / "a.gguf").write_bytes(b"x")
    root = models_dir.resolve()
    out = check_args(
        [
            "--flash-attn", "on", "-ctk", "q8_0", "--seed", "-1", "--chat_template_file", "t.jinja",
            "--lora-scaled", "adapters/a.gguf:0.5", "--no-webui", "-fa", "--jinja", "--temp=0.7",
        ],
        Policy(root),
    )  # fmt: skip
    assert out == [
        "--flash-attn", "on", "-ctk", "q8_0", "--seed", "-1", "--chat-template-file", str(root / "t.jinja"),
        "--lora-scaled", f"{root / 'adapters' / 'a.gguf'}:0.5", "--no-webui", "-fa", "--jinja",
        "--temp", "0.7",
    ]  # fmt: skip


def test_a_symlink_inside_the_models_folder_pointing_outside_is_refused(models_dir: Path) -> None:
    (models_dir / "innocent.jinja").symlink_to("/etc/passwd")
    (models_dir / "linkdir").symlink_to("/etc")
    for args in (["--chat-template-file", "innocent.jinja"], ["--lora", "linkdir/passwd"]):
        with pytest.raises(LaunchPolicyError, match="outside the models folder"):
            check_args(args, Policy(models_dir.resolve()))


def test_the_lift_allows_everything_but_what_llamaman_sets_itself(models_dir: Path) -> None:
    lifted = Policy(models_dir.resolve(), allow_unsafe=True)
    assert check_args(
        ["--tools", "all", "--log-file", "/tmp/x", "--chat-template-file", "/etc/passwd"], lifted
    )
    for managed in (["--port", "1"], ["--api-key", "k"], ["-m", "x.gguf"]):
        with pytest.raises(LaunchPolicyError, match="may not set"):
            check_args(managed, lifted)


# ---- through the real app ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    ["tools", "tools inline", "path", "webui", "chat template file", "log file", "lora dot-dot", "hf short"],
)
async def test_rest_launch_with_a_dangerous_flag_is_refused_and_nothing_runs(
    api: httpx.AsyncClient, services: LlamaMan, case: str
) -> None:
    text, words = ATTACKS[case]
    r = await api.post("/api/instances", json={"model_path": "tiny-a.gguf", "extra_args": text})
    assert r.status_code == 422, r.text
    body = r.json()
    assert "Traceback" not in body["error"]
    for word in words:
        assert word.lower() in body["error"].lower(), body
    assert services.supervisor.list() == []
    with services.db.session() as s:
        assert list(s.exec(select(Instance))) == []


async def test_rest_launch_through_a_symlink_out_of_the_models_folder_is_refused(
    api: httpx.AsyncClient, services: LlamaMan, models_dir: Path
) -> None:
    (models_dir / "tmpl.jinja").symlink_to("/etc/passwd")
    r = await api.post(
        "/api/instances", json={"model_path": "tiny-a.gguf", "extra_args": "--chat-template-file tmpl.jinja"}
    )
    assert r.status_code == 422 and "outside the models folder" in r.json()["error"], r.text
    assert services.supervisor.list() == []


async def test_preset_with_a_dangerous_flag_is_refused(api: httpx.AsyncClient, services: LlamaMan) -> None:
    for text in ("--tools all", "--path=/", "--log-file /tmp/x", "--chat-template-file /etc/passwd"):
        r = await api.put("/api/presets/tiny-a.gguf", json={"extra_args": text})
        assert r.status_code == 422, r.text
        assert text.split("=")[0].split()[0] in r.json()["error"]
    with services.db.session() as s:
        assert list(s.exec(select(Preset))) == []


async def test_backup_restore_with_a_dangerous_preset_restores_nothing_of_it(
    api: httpx.AsyncClient, services: LlamaMan
) -> None:
    backup = {
        "llamaman_backup": 1,
        "presets": {
            "tiny-a.gguf": {"extra_args": "--tools all"},
            "tiny-b.gguf": {"extra_args": "--webui --path /"},
            "embed/tiny-embed.gguf": {"ctx_size": 1024},
        },
    }
    r = await api.post("/api/restore", json=backup)
    # A backup is checked whole before anything is written: one refused preset refuses all of it.
    assert r.status_code == 400, r.text
    assert "presets['tiny-a.gguf']" in r.json()["detail"] and "--tools" in r.json()["detail"]
    assert await services.presets.get("tiny-a.gguf") is None
    assert await services.presets.get("tiny-b.gguf") is None
    assert await services.presets.get("embed/tiny-embed.gguf") is None
    del backup["presets"]["tiny-a.gguf"]
    r = await api.post("/api/restore", json=backup)
    assert r.status_code == 400 and "--webui" in r.json()["detail"], r.text
    del backup["presets"]["tiny-b.gguf"]
    r = await api.post("/api/restore", json=backup)
    assert r.status_code == 200, r.text
    assert await services.presets.get("embed/tiny-embed.gguf") == {"ctx_size": 1024}


def _store(services: LlamaMan, **fields: Any) -> Instance:
    record = Instance(
        id=new_id(),
        model_path="tiny-a.gguf",
        model_name="tiny-a",
        port=services.settings.port_range_start,
        state=S.HEALTHY.value,
        desired_running=True,
        **fields,
    )
    with services.db.session() as s:
        s.add(record)
        s.commit()
        s.refresh(record)
    return record


async def test_a_record_stored_before_the_policy_never_runs_its_flags(
    make_settings: Callable[..., Settings], llama_server_bin: str
) -> None:
    settings = make_settings(LLAMA_SERVER_BIN=llama_server_bin)
    first = LlamaMan(settings)
    await first.start()
    try:
        # Written straight to the database, as an older LlamaMan (or a tampered row) would have.
        record = _store(first, extra_args="--tools all")
    finally:
        await first.stop()
    second = LlamaMan(settings)
    await second.start()
    try:
        m = second.supervisor.get(record.id)
        assert m.state == S.FAILED and m.proc.pid is None
        assert "--tools" in (m.proc.error or "") and "launch policy" in (m.proc.error or "")
        from llamaman.instances.instance import InstanceError

        with pytest.raises(InstanceError) as info:
            await second.supervisor.restart(m.id)
        assert info.value.status_code == 422 and "--tools" in info.value.message
        assert m.state == S.FAILED and m.proc.pid is None
    finally:
        await second.stop()


async def test_a_preset_stored_before_the_policy_fails_the_load_with_the_reason(services: LlamaMan) -> None:
    from llamaman.scheduling.router import ModelUnavailable

    with services.db.session() as s:
        s.add(Preset(model_path="tiny-a.gguf", settings={"extra_args": "--tools all"}))
        s.commit()
    with pytest.raises(ModelUnavailable, match="--tools"):
        await services.router.acquire("tiny-a")
    assert all(m.proc.pid is None for m in services.supervisor.list())


async def test_the_ui_validation_path_refuses_too(services: LlamaMan) -> None:
    # The launch page and the preset form validate through LaunchSettings, as the REST API does.
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="--tools"):
        LaunchSettings(model_path="tiny-a.gguf", extra_args="--tools all")
    with pytest.raises(ValidationError, match="outside the models folder"):
        LaunchSettings(model_path="tiny-a.gguf", extra_args="--lora /etc/passwd")


async def test_the_operator_lift_lets_a_flag_through(
    make_settings: Callable[..., Settings], llama_server_bin: str, tmp_path: Path
) -> None:
    from llamaman.app import create_app
    from tests.helpers import admin_headers

    settings = make_settings(LLAMA_SERVER_BIN=llama_server_bin, LLAMAMAN_ALLOW_UNSAFE_ARGS="1")
    assert settings.allow_unsafe_args
    svc = LlamaMan(settings)
    await svc.start()
    try:
        app = create_app(svc, manage_lifecycle=False)
        headers = await admin_headers(svc)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
        ) as api:
            log = tmp_path / "elsewhere.log"
            r = await api.post(
                "/api/instances",
                json={"model_path": "tiny-a.gguf", "ctx_size": 256, "extra_args": f"--log-file {log}"},
            )
            assert r.status_code == 201, r.text
            assert f"--log-file {log}" in " ".join(r.json()["command"])
            # Runtime settings cannot turn the policy off again or on: it is the environment's alone.
            r = await api.post("/api/settings", json={"allow_unsafe_args": False})
            assert r.status_code in (200, 422)
            assert svc.supervisor.policy.allow_unsafe
    finally:
        await svc.stop()


async def test_runtime_settings_cannot_lift_the_policy(api: httpx.AsyncClient, services: LlamaMan) -> None:
    r = await api.post("/api/settings", json={"allow_unsafe_args": True})
    assert r.status_code in (200, 422), r.text
    r = await api.post("/api/instances", json={"model_path": "tiny-a.gguf", "extra_args": "--tools all"})
    assert r.status_code == 422


def test_child_environment_keeps_runtime_variables_and_drops_the_rest() -> None:
    parent = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "CUDA_VISIBLE_DEVICES": "0",
        "HIP_VISIBLE_DEVICES": "1",
        "GGML_VK_VISIBLE_DEVICES": "0",
        "LD_LIBRARY_PATH": "/opt/lib",
        "LLAMAMAN_ADMIN_PASSWORD": "pw",
        "LLAMAMAN_API_KEYS": "k",
        "SECRET_KEY": "s",
        "DATABASE_URL": "mysql://u:p@h/d",
        "HF_TOKEN": "hf_x",
        "LLAMA_ARG_TOOLS": "all",
        "LLAMA_API_KEY": "theirs",
        "AWS_SECRET_ACCESS_KEY": "aws",
    }
    env = child_environment(parent, {"LLAMA_API_KEY": "ours"})
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "CUDA_VISIBLE_DEVICES": "0",
        "HIP_VISIBLE_DEVICES": "1",
        "GGML_VK_VISIBLE_DEVICES": "0",
        "LD_LIBRARY_PATH": "/opt/lib",
        "LLAMA_API_KEY": "ours",
    }
    assert Kind.TUNE is FLAG_KINDS["--flash-attn"]
    assert os.environ is not parent


async def test_model_and_projector_settings_through_symlinks_out_of_the_folder_are_refused(
    api: httpx.AsyncClient, services: LlamaMan, models_dir: Path, tmp_path: Path
) -> None:
    from llamaman.testing.tiny_gguf import write_tiny_model

    outside = tmp_path / "outside"
    write_tiny_model(outside / "secret.gguf", "A")
    (models_dir / "linked.gguf").symlink_to(outside / "secret.gguf")
    (models_dir / "linked-mmproj.gguf").symlink_to("/etc/passwd")
    for body in (
        {"model_path": "linked.gguf"},
        {"model_path": "tiny-a.gguf", "mmproj": "linked-mmproj.gguf"},
        {"model_path": "tiny-a.gguf", "mmproj": "/etc/passwd"},
        {"model_path": "tiny-a.gguf", "mmproj": "../outside/secret.gguf"},
    ):
        r = await api.post("/api/instances", json=body)
        assert r.status_code == 400, (body, r.text)
        assert "outside the models folder" in r.json()["error"] or "'..'" in r.json()["error"]
    assert services.supervisor.list() == []


async def test_a_projector_found_beside_a_model_is_not_used_when_it_leads_outside(
    services: LlamaMan, models_dir: Path, tmp_path: Path
) -> None:
    from llamaman.testing.tiny_gguf import write_tiny_model

    write_tiny_model(tmp_path / "elsewhere" / "mmproj-x.gguf", "B")
    write_tiny_model(models_dir / "vision" / "tiny-v.gguf", "A")
    (models_dir / "vision" / "mmproj-x.gguf").symlink_to(tmp_path / "elsewhere" / "mmproj-x.gguf")
    await services.library.ascan()
    entry = services.library.find("vision/tiny-v.gguf")
    assert entry is not None and entry.mmproj == "vision/mmproj-x.gguf"
    m = await services.supervisor.launch(LaunchSettings(model_path="vision/tiny-v.gguf", ctx_size=256))
    assert "--mmproj" not in m.proc.argv
    await services.supervisor.stop(m.id)

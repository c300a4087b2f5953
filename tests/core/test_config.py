"""Settings: environment names and defaults, container defaults, CLI flags, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llamaman.cli import parse_args, settings_from_args
from llamaman.core.config import Settings


def _env_names() -> set[str]:
    names = {"LLAMAMAN_CONTAINER"}
    for field in Settings.model_fields.values():
        if field.alias:
            names.add(field.alias)
        choices = getattr(field.validation_alias, "choices", None)
        if choices:
            names.update(c for c in choices if isinstance(c, str))
    return names


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No LlamaMan variable from the outer environment, and a fresh working directory."""
    for name in _env_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults_without_any_environment_keep_folders_in_the_working_directory(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = Settings()
    assert s.models_dir == tmp_path.resolve() / "models"
    assert s.data_dir == tmp_path.resolve() / "data"
    assert s.logs_dir == tmp_path.resolve() / "data" / "logs"
    assert (s.port_range_start, s.port_range_end) == (8000, 8020)
    assert (s.internal_port_range_start, s.internal_port_range_end) == (9000, 9020)
    assert s.proxy_port == 42069
    assert s.max_models == 0
    assert s.idle_timeout == 0
    assert s.health_check_timeout == 3
    assert s.model_load_timeout == 300
    assert s.request_timeout == 300
    assert s.host == "0.0.0.0"
    assert s.port == 5000
    assert s.llama_server_bin is None
    assert s.database_url is None and s.secret_key is None
    assert s.effective_database_url == f"sqlite:///{tmp_path.resolve() / 'data' / 'llamaman.db'}"
    assert not (tmp_path / "models").exists()  # reading settings creates nothing


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("LLAMAMAN_HOST", "127.0.0.1", "host", "127.0.0.1"),
        ("LLAMAMAN_PORT", "5050", "port", 5050),
        ("LLAMAMAN_PROXY_PORT", "11434", "proxy_port", 11434),
        ("PORT_RANGE_START", "8005", "port_range_start", 8005),
        ("PORT_RANGE_END", "8100", "port_range_end", 8100),
        ("INTERNAL_PORT_RANGE_START", "9005", "internal_port_range_start", 9005),
        ("INTERNAL_PORT_RANGE_END", "9100", "internal_port_range_end", 9100),
        ("LLAMAMAN_MAX_MODELS", "3", "max_models", 3),
        ("LLAMAMAN_IDLE_TIMEOUT", "2.5", "idle_timeout", 2.5),
        ("HEALTH_CHECK_TIMEOUT", "7", "health_check_timeout", 7),
        ("MODEL_LOAD_TIMEOUT", "600", "model_load_timeout", 600),
        ("REQUEST_TIMEOUT", "120", "request_timeout", 120),
        ("LLAMA_SERVER_BIN", "/opt/llama/llama-server", "llama_server_bin", "/opt/llama/llama-server"),
        (
            "DATABASE_URL",
            "mysql+pymysql://u:p@db/llamaman",
            "database_url",
            "mysql+pymysql://u:p@db/llamaman",
        ),
        ("SECRET_KEY", "k" * 32, "secret_key", "k" * 32),
        ("HF_TOKEN", "hf_x", "hf_token", "hf_x"),
        ("HUGGING_FACE_HUB_TOKEN", "hf_y", "hf_token", "hf_y"),
    ],
)
def test_each_environment_variable_sets_its_setting(
    env: pytest.MonkeyPatch, name: str, value: str, field: str, expected: Any
) -> None:
    env.setenv(name, value)
    assert getattr(Settings(), field) == expected


def test_folders_come_from_the_environment_and_logs_follow_the_data_dir(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.setenv("MODELS_DIR", str(tmp_path / "m"))
    env.setenv("DATA_DIR", "relative-data")
    s = Settings()
    assert s.models_dir == tmp_path.resolve() / "m"
    assert s.data_dir == tmp_path.resolve() / "relative-data"
    assert s.logs_dir == s.data_dir / "logs"
    assert s.effective_database_url == f"sqlite:///{s.data_dir / 'llamaman.db'}"

    env.setenv("LOGS_DIR", str(tmp_path / "elsewhere" / "logs"))
    assert Settings().logs_dir == tmp_path.resolve() / "elsewhere" / "logs"


def test_container_defaults_are_the_mounted_folders(env: pytest.MonkeyPatch) -> None:
    env.setenv("LLAMAMAN_CONTAINER", "1")
    s = Settings()
    assert s.models_dir == Path("/models")
    assert s.data_dir == Path("/data")
    assert s.logs_dir == Path("/data/logs")
    # The container defaults are only defaults.
    env.setenv("MODELS_DIR", "/srv/models")
    assert Settings().models_dir == Path("/srv/models")


def test_command_line_flags_override_the_environment(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("LLAMAMAN_PORT", "7000")
    env.setenv("LLAMAMAN_HOST", "127.0.0.1")
    env.setenv("MODELS_DIR", str(tmp_path / "env-models"))
    env.setenv("LLAMAMAN_MAX_MODELS", "4")
    args = parse_args(
        [
            "--port",
            "6000",
            "--models-dir",
            str(tmp_path / "cli-models"),
            "--proxy-port",
            "0",
            "--max-models",
            "1",
        ]
    )
    s = settings_from_args(args)
    assert s.port == 6000
    assert s.models_dir == tmp_path.resolve() / "cli-models"
    assert s.proxy_port == 0
    assert s.max_models == 1
    assert s.host == "127.0.0.1"  # not given on the command line: the environment still counts


def test_without_flags_the_environment_is_used(env: pytest.MonkeyPatch) -> None:
    env.setenv("LLAMAMAN_PORT", "7000")
    assert settings_from_args(parse_args([])).port == 7000


@pytest.mark.parametrize(
    ("environment", "argv", "words"),
    [
        (
            {"PORT_RANGE_START": "8030", "PORT_RANGE_END": "8010"},
            [],
            "PORT_RANGE_START must not exceed PORT_RANGE_END",
        ),
        (
            {"INTERNAL_PORT_RANGE_START": "9500", "INTERNAL_PORT_RANGE_END": "9000"},
            [],
            "INTERNAL_PORT_RANGE_START must not exceed INTERNAL_PORT_RANGE_END",
        ),
        ({"LLAMAMAN_PORT": "abc"}, [], "LLAMAMAN_PORT: Input should be a valid integer"),
        (
            {"LLAMAMAN_MAX_MODELS": "-1"},
            [],
            "LLAMAMAN_MAX_MODELS: Input should be greater than or equal to 0",
        ),
        ({"MODEL_LOAD_TIMEOUT": "0"}, [], "MODEL_LOAD_TIMEOUT: Input should be greater than 0"),
        ({}, ["--port", "70000"], "LLAMAMAN_PORT: Input should be less than or equal to 65535"),
        ({"LLAMAMAN_NODE_NAME": "box-1"}, [], "needs a LLAMAMAN_NODE_SECRET of 16+ characters"),
        (
            {"LLAMAMAN_NODE_NAME": "box-1", "LLAMAMAN_NODE_SECRET": "short"},
            [],
            "needs a LLAMAMAN_NODE_SECRET of 16+ characters",
        ),
        (
            {"LLAMAMAN_NODE_NAME": "box 1/<b>", "LLAMAMAN_NODE_SECRET": "x" * 32},
            [],
            "LLAMAMAN_NODE_NAME: letters, digits",
        ),
        (
            {
                "LLAMAMAN_NODE_NAME": "box-1",
                "LLAMAMAN_NODE_SECRET": "x" * 32,
                "LLAMAMAN_NODE_URL": "box-1:5000",
            },
            [],
            "LLAMAMAN_NODE_URL must be an http:// or https:// URL",
        ),
        ({"LLAMAMAN_NODE_URL": "http://10.0.0.2:5000"}, [], "LLAMAMAN_NODE_URL needs LLAMAMAN_NODE_NAME"),
    ],
    ids=[
        "port range reversed",
        "internal range reversed",
        "port not a number",
        "negative max",
        "zero load",
        "flag",
        "node without secret",
        "node secret too short",
        "node name with markup",
        "node url not a url",
        "node url without name",
    ],
)
def test_invalid_settings_end_with_a_clear_message_not_a_traceback(
    env: pytest.MonkeyPatch, environment: dict[str, str], argv: list[str], words: str
) -> None:
    for name, value in environment.items():
        env.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        settings_from_args(parse_args(argv))
    message = exc.value.code
    assert isinstance(message, str)
    assert message.startswith("invalid settings:")
    assert words in message
    assert "Traceback" not in message and "pydantic" not in message
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_public_settings_hide_secrets_and_database_password(env: pytest.MonkeyPatch) -> None:
    env.setenv("SECRET_KEY", "very-secret")
    env.setenv("HF_TOKEN", "hf_secret")
    env.setenv("LLAMAMAN_ADMIN_PASSWORD", "admin-pw")
    env.setenv("DATABASE_URL", "mysql+pymysql://llama:db-pw@db.local:3306/llamaman")
    env.setenv("LLAMAMAN_NODE_NAME", "box-1")
    env.setenv("LLAMAMAN_NODE_SECRET", "node-secret-0123456789")
    shown = Settings().public_dict()
    assert shown["node_secret"] == "***" and shown["node_name"] == "box-1"
    assert shown["secret_key"] == shown["hf_token"] == shown["admin_password"] == "***"
    assert shown["database_url"] == "mysql+pymysql://***@db.local:3306/llamaman"
    for secret in ("very-secret", "hf_secret", "admin-pw", "db-pw", "node-secret-0123456789"):
        assert secret not in str(shown)

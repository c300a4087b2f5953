"""Settings: the only reader of the environment.

Names and defaults follow the original LlamaMan so its users can switch without editing their
environment. CLI flags override the environment (see ``main.py``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llamaman.core.memory_limit import parse_memory_limit


def _default_dir(container_path: str, local_name: str) -> Path:
    # The container image sets LLAMAMAN_CONTAINER=1 and mounts /models and /data; a workstation keeps
    # folders under the working directory. Not guessed from /.dockerenv: dev sandboxes have one too.
    if os.environ.get("LLAMAMAN_CONTAINER") == "1":
        return Path(container_path)
    return Path.cwd() / local_name


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    models_dir: Path = Field(default_factory=lambda: _default_dir("/models", "models"), alias="MODELS_DIR")
    data_dir: Path = Field(default_factory=lambda: _default_dir("/data", "data"), alias="DATA_DIR")
    logs_dir: Path | None = Field(default=None, alias="LOGS_DIR")

    host: str = Field(default="0.0.0.0", alias="LLAMAMAN_HOST")
    port: int = Field(default=5000, alias="LLAMAMAN_PORT", ge=1, le=65535)
    proxy_port: int = Field(default=42069, alias="LLAMAMAN_PROXY_PORT", ge=0, le=65535)
    # The proxy port's fast lane for plain model requests (see proxy/fast_lane.py); off: every
    # request takes the full ASGI path.
    proxy_fast_lane: bool = Field(default=True, alias="LLAMAMAN_PROXY_FAST_LANE")

    port_range_start: int = Field(default=8000, alias="PORT_RANGE_START", ge=1, le=65535)
    port_range_end: int = Field(default=8020, alias="PORT_RANGE_END", ge=1, le=65535)
    internal_port_range_start: int = Field(default=9000, alias="INTERNAL_PORT_RANGE_START", ge=1, le=65535)
    internal_port_range_end: int = Field(default=9020, alias="INTERNAL_PORT_RANGE_END", ge=1, le=65535)

    max_models: int = Field(default=0, alias="LLAMAMAN_MAX_MODELS", ge=0)
    # Memory models may use per device (cpu=48GiB,gpu0=22GiB); unset = free at start less the reserve.
    memory_limit: str | None = Field(default=None, alias="LLAMAMAN_MEMORY_LIMIT")
    memory_reserve: str | None = Field(default=None, alias="LLAMAMAN_MEMORY_RESERVE")
    # Minutes without a request before an instance started by the proxy is put to sleep; 0 = never.
    idle_timeout: float = Field(default=0, alias="LLAMAMAN_IDLE_TIMEOUT", ge=0)

    secret_key: str | None = Field(default=None, alias="SECRET_KEY")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")

    health_check_timeout: float = Field(default=3, alias="HEALTH_CHECK_TIMEOUT", gt=0)
    model_load_timeout: float = Field(default=300, alias="MODEL_LOAD_TIMEOUT", gt=0)
    request_timeout: float = Field(default=300, alias="REQUEST_TIMEOUT", gt=0)

    llama_server_bin: str | None = Field(default=None, alias="LLAMA_SERVER_BIN")

    # Headless bootstrap for containers and automation.
    admin_user: str | None = Field(default=None, alias="LLAMAMAN_ADMIN_USER")
    admin_password: str | None = Field(default=None, alias="LLAMAMAN_ADMIN_PASSWORD")
    api_keys: str | None = Field(default=None, alias="LLAMAMAN_API_KEYS")
    # Keys with the admin scope (manage LlamaMan, not only use models); a key in both lists is admin.
    admin_api_keys: str | None = Field(default=None, alias="LLAMAMAN_ADMIN_API_KEYS")
    # Reverse proxies whose X-Forwarded-For / Forwarded / X-Real-IP name the real client (IPs or
    # CIDRs, comma-separated). From anyone else those headers are ignored: a client could otherwise
    # pick a new address per sign-in attempt and never be throttled.
    trusted_proxies: str = Field(default="", alias="LLAMAMAN_TRUSTED_PROXIES")

    # Hugging Face: token and endpoint (the endpoint is read by huggingface_hub itself too).
    hf_token: str | None = Field(
        default=None, validation_alias=AliasChoices("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    )
    hf_endpoint: str | None = Field(default=None, alias="HF_ENDPOINT")

    # Seconds between two SIGTERM→SIGKILL escalation steps when stopping a llama-server.
    stop_grace_seconds: float = Field(default=10, alias="LLAMAMAN_STOP_GRACE", gt=0)
    # A llama-server that dies on its own is started again up to this many times (0: never), the
    # first after LLAMAMAN_RESTART_BACKOFF seconds, doubling up to LLAMAMAN_RESTART_BACKOFF_MAX.
    restart_max: int = Field(default=3, alias="LLAMAMAN_RESTART_MAX", ge=0, le=100)
    restart_backoff: float = Field(default=1.0, alias="LLAMAMAN_RESTART_BACKOFF", gt=0)
    restart_backoff_max: float = Field(default=60.0, alias="LLAMAMAN_RESTART_BACKOFF_MAX", gt=0)
    # Lines kept in memory per instance for live log tails.
    log_ring_lines: int = Field(default=2000, alias="LLAMAMAN_LOG_RING", ge=10)
    # A llama-server log file is rotated past this size, keeping this many older files (name.log.1, ...).
    llama_log_max_bytes: int = Field(default=10 * 1024 * 1024, alias="LLAMAMAN_LOG_MAX_BYTES", ge=4096)
    llama_log_backups: int = Field(default=2, alias="LLAMAMAN_LOG_BACKUPS", ge=0, le=100)

    # Lifts the launch-argument policy (llamaman/instances/launch_policy.py) for operators who trust every
    # caller: any llama-server flag then passes. Only from the environment, never from the API.
    allow_unsafe_args: bool = Field(default=False, alias="LLAMAMAN_ALLOW_UNSAFE_ARGS")
    # Whether llama-servers get HF_TOKEN (for -hf downloads, which the policy refuses unless lifted).
    pass_hf_token: bool = Field(default=False, alias="LLAMAMAN_PASS_HF_TOKEN")

    # Runtime settings (``core/runtime.py``) an operator may pin from the environment; unset (None)
    # leaves them to what a user saves. max_models, idle_timeout and hf_token above pin theirs too.
    require_auth: bool | None = Field(default=None, alias="LLAMAMAN_REQUIRE_AUTH")
    evict_manual: bool | None = Field(default=None, alias="LLAMAMAN_EVICT_MANUAL")
    cleanup_hours: float | None = Field(default=None, alias="LLAMAMAN_CLEANUP_HOURS")
    download_retries: int | None = Field(default=None, alias="LLAMAMAN_DOWNLOAD_RETRIES")
    download_speed_limit_mbps: float | None = Field(default=None, alias="LLAMAMAN_DOWNLOAD_SPEED_LIMIT_MBPS")
    activity_retention: int | None = Field(default=None, alias="LLAMAMAN_ACTIVITY_RETENTION")

    # Several boxes as one service (all nodes share DATABASE_URL). Unset name: a standalone box.
    node_name: str | None = Field(default=None, alias="LLAMAMAN_NODE_NAME", max_length=64)
    # How the other nodes reach this one's main port, e.g. http://10.0.0.5:5000.
    node_url: str | None = Field(default=None, alias="LLAMAMAN_NODE_URL")
    # Shared by every node; a request forwarded between nodes carries it instead of a user's key.
    node_secret: str | None = Field(default=None, alias="LLAMAMAN_NODE_SECRET")
    # Seconds between two heartbeats, and of silence after which a node is out of rotation.
    node_heartbeat: float = Field(default=1.0, alias="LLAMAMAN_NODE_HEARTBEAT", gt=0, le=60)
    node_timeout: float = Field(default=4.0, alias="LLAMAMAN_NODE_TIMEOUT", gt=0, le=600)

    # Fields given as command-line flags (``cli.py``); every other explicitly set field came from
    # the environment (or, in code and tests, from keyword arguments, which mean the same).
    _flags: set[str] = PrivateAttr(default_factory=set)

    @field_validator("models_dir", "data_dir", "logs_dir", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        if isinstance(v, str) and v:
            return Path(v).expanduser()
        return v

    @field_validator("memory_limit", "memory_reserve")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parse_memory_limit(v)  # fails start-up with the reason, not the first request
        return v.strip()

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: str) -> str:
        for part in (p.strip() for p in v.split(",")):
            if part:
                try:
                    ipaddress.ip_network(part, strict=False)
                except ValueError:
                    raise ValueError(
                        f"LLAMAMAN_TRUSTED_PROXIES: {part!r} is not an IP address or CIDR"
                    ) from None
        return v

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(
            ipaddress.ip_network(p.strip(), strict=False)
            for p in self.trusted_proxies.split(",")
            if p.strip()
        )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.port_range_start > self.port_range_end:
            raise ValueError("PORT_RANGE_START must not exceed PORT_RANGE_END")
        if self.internal_port_range_start > self.internal_port_range_end:
            raise ValueError("INTERNAL_PORT_RANGE_START must not exceed INTERNAL_PORT_RANGE_END")
        if self.node_name is not None:
            self.node_name = self.node_name.strip() or None
        if self.node_name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.node_name):
            raise ValueError("LLAMAMAN_NODE_NAME: letters, digits, '.', '_' and '-' only")
        if self.node_url:
            self.node_url = self.node_url.strip().rstrip("/")
            if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", self.node_url):
                raise ValueError("LLAMAMAN_NODE_URL must be an http:// or https:// URL")
            if not self.node_name:
                raise ValueError("LLAMAMAN_NODE_URL needs LLAMAMAN_NODE_NAME")
        if self.node_name and (not self.node_secret or len(self.node_secret) < 16):
            raise ValueError("a node (LLAMAMAN_NODE_NAME) needs a LLAMAMAN_NODE_SECRET of 16+ characters")
        if self.node_timeout <= self.node_heartbeat:
            raise ValueError("LLAMAMAN_NODE_TIMEOUT must exceed LLAMAMAN_NODE_HEARTBEAT")
        self.models_dir = self.models_dir.resolve()
        self.data_dir = self.data_dir.resolve()
        self.logs_dir = (self.logs_dir or self.data_dir / "logs").resolve()
        return self

    def mark_flags(self, names: set[str]) -> Settings:
        """Record which fields came from command-line flags (their source then reads ``flag``)."""
        self._flags = set(names) & set(self.model_fields_set)
        return self

    def explicit(self, name: str) -> tuple[Any, str] | None:
        """``(value, "flag" | "env")`` when field ``name`` was set on purpose, else None."""
        if name not in self.model_fields_set:
            return None
        return getattr(self, name), "flag" if name in self._flags else "env"

    @staticmethod
    def env_name(name: str) -> str:
        field = Settings.model_fields[name]
        if field.alias:
            return field.alias
        choices = getattr(field.validation_alias, "choices", None)
        return str(choices[0]) if choices else name.upper()

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'llamaman.db'}"

    def ensure_dirs(self) -> None:
        for d in (self.models_dir, self.data_dir, self.logs_dir):
            assert d is not None
            d.mkdir(parents=True, exist_ok=True)

    def public_dict(self) -> dict[str, Any]:
        """Settings as shown to users: secrets redacted."""
        out = self.model_dump(mode="json")
        for secret in (
            "secret_key",
            "admin_password",
            "api_keys",
            "admin_api_keys",
            "hf_token",
            "node_secret",
        ):
            if out.get(secret):
                out[secret] = "***"
        if self.database_url and "@" in self.database_url:
            scheme, rest = self.database_url.split("://", 1)
            out["database_url"] = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

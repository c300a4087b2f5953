"""Launch settings: what the REST API, presets and the UI accept, validated before anything runs."""

from __future__ import annotations

import re
import shlex
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llamaman.core.tables import Instance, LaunchBase
from llamaman.instances.launch_policy import Policy, check_args

# Tokens that only mean something to a shell. extra_args never reach a shell, so a user who types
# them expects shell behaviour they will not get: refuse them with a clear message instead.
_SHELL_META = re.compile(r"[;&|`<>]|\$\(|\$\{|^\s*\\$|\n")

# host:port of a llama.cpp RPC worker: a DNS name or IPv4 address, or an IPv6 address in brackets.
_RPC_ADDRESS = re.compile(
    r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})"
)
MAX_RPC_WORKERS = 16

SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "presence_penalty", "repeat_penalty")


class SamplingOverrides(BaseModel):
    """Sampling values forced onto every request an instance serves."""

    model_config = ConfigDict(extra="forbid")
    temperature: float | None = Field(default=None, ge=0, le=10)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    repeat_penalty: float | None = Field(default=None, ge=0, le=10)

    def active(self) -> dict[str, float | int]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class LaunchSettings(LaunchBase):
    """Everything needed to launch one llama-server (the create model; the fields are ``LaunchBase``'s).

    The validators live here, not on the shared base: the extra flags are checked by the launch
    policy, which sits above the tables' layer, and a stored row must load even when today's policy
    refuses it (see ``settings_from_record``)."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    port: int | None = Field(
        default=None, description="Public port from the pool; blank picks the next free one"
    )
    sampling: SamplingOverrides = Field(default_factory=SamplingOverrides)

    @field_validator("gpu_devices")
    @classmethod
    def _devices(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if not re.fullmatch(r"[0-9A-Za-z\-]+(,[0-9A-Za-z\-]+)*", v):
            raise ValueError("gpu_devices must be a comma-separated list of GPU indices or UUIDs, e.g. 0,1")
        return v

    @field_validator("rpc_workers")
    @classmethod
    def _rpc_workers(cls, v: list[str]) -> list[str]:
        return check_rpc_addresses(v)

    @field_validator("extra_args")
    @classmethod
    def _extra(cls, v: str) -> str:
        parse_extra_args(v)
        return v.strip()

    def extra_argv(self) -> list[str]:
        """The extra flags as words (checked when the settings were validated; the supervisor
        checks them again with its own policy before a server starts)."""
        return split_extra_args(self.extra_args)

    def request_ctx(self, trained_ctx: int | None) -> int:
        """Tokens one request can use: llama-server splits -c (0 = the model's trained context)
        between its parallel slots unless the KV cache is unified."""
        ctx = self.ctx_size if self.ctx_size > 0 else (trained_ctx or 0)
        if self.parallel > 1 and not {"-kvu", "--kv-unified"} & set(self.extra_argv()):
            ctx //= self.parallel
        return ctx

    def http_connections(self) -> int:
        """How many requests LlamaMan sends llama-server at once: it reads each connection on one
        of its HTTP threads (``--threads-http``, by default ``parallel + 2`` or more), and one is
        left for health checks and other clients. One more than its slots keeps a request queued
        inside llama-server, ready the moment a slot frees."""
        argv = self.extra_argv()
        for i, word in enumerate(argv):
            name, _, value = word.partition("=")
            if name == "--threads-http":
                value = value or (argv[i + 1] if i + 1 < len(argv) else "")
                if value.isdigit() and int(value) > 0:
                    return max(1, min(self.parallel + 1, int(value) - 1))
        return self.parallel + 1

    def needs_listener(self) -> bool:
        """Whether requests must pass through LlamaMan's own listener on the public port."""
        return bool(self.idle_timeout_min or self.max_concurrent or self.sampling.active())


def rpc_address(text: str) -> str:
    """One RPC worker address as ``host:port``, or ValueError saying what is wrong with it."""
    value = text.strip()
    m = _RPC_ADDRESS.fullmatch(value)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"rpc_workers: {text!r} is not a host:port address (e.g. 10.0.0.5:50052)")
    if m["host"] in ("0.0.0.0", "[::]"):
        raise ValueError(f"rpc_workers: {text!r} is a listen-anywhere address, not one to connect to")
    return value


def check_rpc_addresses(values: list[str]) -> list[str]:
    """The workers of a launch: valid, without repeats, at most ``MAX_RPC_WORKERS``. Whether each is
    registered and alive is checked at launch time, against the workers table."""
    out: list[str] = []
    for v in values:
        address = rpc_address(v)
        if address in out:
            raise ValueError(f"rpc_workers: {address} is listed twice")
        out.append(address)
    if len(out) > MAX_RPC_WORKERS:
        raise ValueError(f"rpc_workers: at most {MAX_RPC_WORKERS} workers per launch")
    return out


def split_extra_args(text: str) -> list[str]:
    """Split extra llama-server flags like a shell would, but refuse anything only a shell runs."""
    if not text or not text.strip():
        return []
    if _SHELL_META.search(text):
        raise ValueError(
            "extra_args may not contain shell syntax (; & | ` < > $( ) ): they are passed to llama-server "
            "as plain arguments, never through a shell"
        )
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"extra_args could not be parsed: {exc}") from None


def parse_extra_args(text: str, policy: Policy | None = None) -> list[str]:
    """Extra flags checked against the launch policy (see ``launch_policy``); file paths come back
    absolute inside MODELS_DIR."""
    return check_args(split_extra_args(text), policy)


def build_argv(
    prefix: list[str],
    *,
    model_file: str,
    host: str,
    port: int,
    alias: str,
    settings: LaunchSettings,
    mmproj_file: str | None,
    extra: list[str] | None = None,
) -> list[str]:
    """The full command line; ``extra`` is the policy-checked form of the extra flags."""
    argv = [
        *prefix,
        "-m", model_file,
        "--host", host,
        "--port", str(port),
        "-c", str(settings.ctx_size),
        "-ngl", str(settings.n_gpu_layers if settings.n_gpu_layers >= 0 else 999),
        "-np", str(settings.parallel),
        "--alias", alias,
        "--metrics",
        "--no-webui",
    ]  # fmt: skip
    if settings.threads:
        argv += ["-t", str(settings.threads)]
    if settings.embedding:
        argv.append("--embeddings")
    if mmproj_file:
        argv += ["--mmproj", mmproj_file]
    if settings.rpc_workers:
        # Layers go to the workers as well as the local devices; -ngl counts both.
        argv += ["--rpc", ",".join(settings.rpc_workers)]
    argv += settings.extra_argv() if extra is None else extra
    return argv


# What an instance row and launch settings have in common: the shared fields plus the port.
_STORED_FIELDS = (set(LaunchBase.model_fields) - {"extra_args"}) | {"port"}


def settings_from_record(record: Instance) -> LaunchSettings:
    """Rebuild launch settings from a stored instance row.

    A row whose extra flags the launch policy refuses (stored before it existed, or by hand) still
    loads, with the flags kept unvalidated: the supervisor checks them again before any spawn and
    shows the row failed with the reason instead of losing it."""
    values: dict[str, Any] = record.model_dump(include=_STORED_FIELDS)
    values["sampling"] = SamplingOverrides(**(record.sampling or {}))
    values["rpc_workers"] = list(record.rpc_workers or [])  # NULL in rows older than the column
    extra = record.extra_args or ""
    try:
        return LaunchSettings(**values, extra_args=extra)
    except ValidationError:
        return LaunchSettings(**values).model_copy(update={"extra_args": extra})

"""SQLModel tables: the persistent state of LlamaMan.

Strings carry explicit lengths because MySQL/MariaDB refuse unbounded VARCHAR; long free text
(errors, logs) uses TEXT. Floats are DOUBLE: MySQL's FLOAT is single precision and would round
Unix timestamps to about a minute. JSON columns hold structured settings that the API passes through.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Double, Text
from sqlmodel import Field, SQLModel
from sqlmodel.sql.sqltypes import AutoString


def new_id() -> str:
    return secrets.token_hex(6)


def now() -> float:
    return time.time()


class LaunchBase(SQLModel):
    """How one llama-server is launched: the fields the REST API accepts and the instance table stores.

    Declared once here so the create model (``instances.launch.LaunchSettings``) and the table cannot
    drift apart. Field constraints hold for both; validators that need the launch policy live on the
    create model, above this layer (see ``LaunchSettings``). Column lengths use ``sa_type`` rather
    than ``max_length`` so the database's VARCHAR sizes do not become new API limits.
    """

    model_path: str = Field(
        min_length=1,
        sa_type=AutoString(length=1024),
        description="GGUF path, relative to MODELS_DIR (or absolute inside it)",
    )
    n_gpu_layers: int = Field(default=-1, ge=-1, description="Layers offloaded to the GPU; -1 = all")
    ctx_size: int = Field(default=4096, ge=0, le=10_000_000, description="Context size; 0 = the model's own")
    threads: int | None = Field(
        default=None, ge=1, le=1024, description="CPU threads; blank = llama.cpp's choice"
    )
    parallel: int = Field(default=1, ge=1, le=256, description="Parallel slots (concurrent sequences)")
    gpu_devices: str | None = Field(
        default=None,
        sa_type=AutoString(length=255),
        description="CUDA_VISIBLE_DEVICES for this instance, e.g. 0,1",
    )
    extra_args: str = Field(
        default="", max_length=4000, sa_type=Text, description="More llama-server flags (no shell)"
    )
    embedding: bool = Field(default=False, description="Serve embeddings (--embeddings)")
    mmproj: str | None = Field(
        default=None,
        sa_type=AutoString(length=1024),
        description="Multimodal projector, relative to MODELS_DIR",
    )
    idle_timeout_min: float = Field(
        default=0, ge=0, sa_type=Double, description="Sleep after this many idle minutes; 0 = never"
    )
    max_concurrent: int = Field(default=0, ge=0, le=1024, description="Requests served at once; 0 = no limit")
    max_queue_depth: int = Field(
        default=0, ge=0, le=100_000, description="Requests that may wait; beyond: 429"
    )
    share_queue: bool = Field(default=False, description="Replicas of this model share one queue")
    # Nullable: rows stored before the column existed read back as no workers.
    rpc_workers: list[str] = Field(
        default_factory=list,
        sa_type=JSON,
        nullable=True,
        description="llama.cpp RPC workers (host:port, see GET /api/workers) to spread the model over",
    )


class Instance(LaunchBase, table=True):
    """One supervised llama-server and how it was launched.

    ``port`` and ``sampling`` are not in ``LaunchBase``: the API accepts no port (the pool picks one)
    while a stored instance always has one, and the API's typed sampling overrides are stored as the
    plain JSON of the active values."""

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    model_name: str = Field(max_length=255, index=True)
    port: int
    internal_port: int | None = None
    sampling: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    # "manual" instances were launched by a person; "proxy" ones were started on demand.
    origin: str = Field(default="manual", max_length=16)
    state: str = Field(default="stopped", max_length=16, index=True)
    # Whether the instance should be running: restored at start when true.
    desired_running: bool = True
    pid: int | None = None
    exit_code: int | None = None
    error: str | None = Field(default=None, sa_type=Text)
    last_log: str | None = Field(default=None, sa_type=Text)
    command: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    created_at: float = Field(default_factory=now, sa_type=Double)
    started_at: float | None = Field(default=None, sa_type=Double)
    stopped_at: float | None = Field(default=None, sa_type=Double)
    # The node that runs it (LLAMAMAN_NODE_NAME); empty on a standalone box. A node restores its own.
    node: str | None = Field(default=None, max_length=64, index=True)


class Download(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    repo_id: str = Field(max_length=255)
    filename: str | None = Field(default=None, max_length=1024)
    revision: str = Field(default="main", max_length=64)
    status: str = Field(default="queued", max_length=16, index=True)
    # Model files pass 2 GiB: a 32-bit INT column (MySQL/MariaDB) would overflow.
    bytes_done: int = Field(default=0, sa_type=BigInteger)
    bytes_total: int = Field(default=0, sa_type=BigInteger)
    speed_limit_mbps: float = Field(default=0, sa_type=Double)
    files: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    attempts: int = 0
    error: str | None = Field(default=None, sa_type=Text)
    created_at: float = Field(default_factory=now, sa_type=Double)
    finished_at: float | None = Field(default=None, sa_type=Double)
    # A token given for this download only: kept so a private repo's download resumes after a restart.
    hf_token: str | None = Field(default=None, sa_type=Text)
    # Folder under MODELS_DIR the files land in (default: the repo id); a restore puts files back there.
    dest_dir: str | None = Field(default=None, max_length=1024)
    # Name an Ollama pull asked for; registered as an alias once the files are in place.
    alias: str | None = Field(default=None, max_length=255)
    # The node whose MODELS_DIR the files land in; empty on a standalone box.
    node: str | None = Field(default=None, max_length=64, index=True)


class Preset(SQLModel, table=True):
    """Saved launch settings for one model, keyed by its path relative to MODELS_DIR."""

    model_path: str = Field(primary_key=True, max_length=512)
    settings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    updated_at: float = Field(default_factory=now, sa_type=Double)


class ModelSource(SQLModel, table=True):
    """Where a model file came from, so a backup can re-download it."""

    model_path: str = Field(primary_key=True, max_length=512)
    repo_id: str = Field(max_length=255)
    filename: str = Field(max_length=1024)
    revision: str = Field(default="main", max_length=64)


class ModelAlias(SQLModel, table=True):
    alias: str = Field(primary_key=True, max_length=255)
    target: str = Field(max_length=512)
    created_at: float = Field(default_factory=now, sa_type=Double)


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=64, unique=True, index=True)
    password_hash: str = Field(max_length=255)
    # The role: an admin changes things, anyone else (a viewer) only looks.
    is_admin: bool = True
    created_at: float = Field(default_factory=now, sa_type=Double)


class UserSession(SQLModel, table=True):
    """A signed-in browser. The cookie carries the session's random id, signed; only the id's SHA-256
    is kept here, so a copy of the database cannot be replayed as cookies."""

    id: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(index=True)
    created_at: float = Field(default_factory=now, sa_type=Double)
    last_seen_at: float = Field(default_factory=now, sa_type=Double)
    # The absolute end; an idle session ends earlier (see ``auth.SESSION_IDLE_S``).
    expires_at: float = Field(sa_type=Double)


class ApiKey(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=128)
    prefix: str = Field(max_length=16)
    key_hash: str = Field(max_length=128, unique=True, index=True)
    allowed_models: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    rpm_limit: int = 0
    revoked: bool = False
    created_at: float = Field(default_factory=now, sa_type=Double)
    last_used_at: float | None = Field(default=None, sa_type=Double)
    # "inference": model endpoints only; "admin": LlamaMan's management too (see llamaman.auth.access).
    scope: str = Field(default="inference", max_length=16)
    # Unix seconds after which the key is refused; None = never.
    expires_at: float | None = Field(default=None, sa_type=Double)
    # Prompt plus completion tokens the key may use per UTC day; 0 = no limit.
    daily_token_quota: int = Field(default=0, sa_type=BigInteger)
    # Who goes first when requests wait for models to swap in: higher first.
    priority: int = 0


class ModelFootprint(SQLModel, table=True):
    """What a model measured to hold after a load, per model and launch settings."""

    key: str = Field(primary_key=True, sa_type=AutoString(length=512))
    model_path: str = Field(sa_type=AutoString(length=512))
    cpu_only: int = Field(sa_type=BigInteger)
    gpu_full: int = Field(sa_type=BigInteger)
    host_full: int = Field(sa_type=BigInteger)
    slots: int = 1
    updated_at: float = Field(default_factory=now, sa_type=Double)


class KeyUsage(SQLModel, table=True):
    """Token usage per key, model and day (UTC, YYYY-MM-DD)."""

    key_id: str = Field(primary_key=True, max_length=32)
    day: str = Field(primary_key=True, max_length=10)
    model: str = Field(primary_key=True, max_length=255)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class AppSetting(SQLModel, table=True):
    """Runtime settings changed from the UI or REST (require-auth, eviction rules, …)."""

    key: str = Field(primary_key=True, max_length=64)
    value: Any = Field(default=None, sa_column=Column(JSON))


class RequestLog(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    ts: float = Field(default_factory=now, index=True, sa_type=Double)
    model: str = Field(default="", max_length=255, index=True)
    endpoint: str = Field(default="", max_length=255)
    key_name: str | None = Field(default=None, max_length=128)
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = Field(default=None, sa_type=Double)
    duration_ms: float = Field(default=0, sa_type=Double)
    tokens_per_s: float | None = Field(default=None, sa_type=Double)
    energy_j: float | None = Field(default=None, sa_type=Double)
    # Why it was refused or failed (the message its client got); empty for answered requests.
    error: str | None = Field(default=None, sa_type=Text)
    # How long the request waited for its model to load (a cold start); empty when it was loaded.
    load_ms: float | None = Field(default=None, sa_type=Double)
    # The node whose llama-server answered (several boxes); empty on a standalone box.
    node: str | None = Field(default=None, max_length=64)


class Node(SQLModel, table=True):
    """One LlamaMan box of several sharing this database, as its last heartbeat described it."""

    name: str = Field(primary_key=True, max_length=64)
    url: str = Field(default="", max_length=1024)
    started_at: float = Field(default_factory=now, sa_type=Double)
    heartbeat_at: float = Field(default_factory=now, sa_type=Double, index=True)
    # Models on disk and resident, free memory per device, in-flight requests, version: see cluster/.
    info: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class RpcWorker(SQLModel, table=True):
    """A llama.cpp RPC worker (``llamaman worker``) a launch may spread a model over."""

    address: str = Field(primary_key=True, max_length=255)  # host:port
    node: str = Field(default="", max_length=64)
    memory_total: int = Field(default=0, sa_type=BigInteger)
    memory_free: int = Field(default=0, sa_type=BigInteger)
    heartbeat_at: float = Field(default_factory=now, sa_type=Double)
    info: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class Peer(SQLModel, table=True):
    """An OpenAI-compatible endpoint that is not LlamaMan (llama-swap, Ollama, ...) whose models join
    the lists and are routed to."""

    name: str = Field(primary_key=True, max_length=64)
    base_url: str = Field(max_length=1024)
    api_key: str | None = Field(default=None, sa_type=Text)
    # fnmatch patterns, comma-separated; empty = every model the peer lists.
    model_filter: str = Field(default="", max_length=1024)
    enabled: bool = True
    created_at: float = Field(default_factory=now, sa_type=Double)


class Benchmark(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    created_at: float = Field(default_factory=now, sa_type=Double)
    model: str = Field(max_length=255)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    results: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    status: str = Field(default="running", max_length=16)

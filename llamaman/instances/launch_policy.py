"""Which llama-server flags a launch may carry, in one place.

Anyone who may launch a model (an API key, a preset, a restored backup) chooses its extra flags, and
llama-server's flags reach far beyond inference: built-in tools run shell commands, ``--path`` serves
a folder, ``--log-file`` writes anywhere, ``--rpc`` and ``-hf`` reach other hosts, and file-taking
flags read any file the server's user can (their content surfaces through ``/props`` or errors).
Every flag of llama-server's own table is classified below; only tuning flags pass as they are,
file-taking flags pass with a path inside ``MODELS_DIR`` (after resolving symlinks), and everything
else is refused with the reason. The REST API, the UI, presets, backup restore and the CLI all check
through :class:`~llamaman.instances.launch.LaunchSettings`; the supervisor checks again right before it
spawns, so a record stored before this policy existed cannot run a dangerous flag either.

An operator who trusts every caller lifts the policy with ``LLAMAMAN_ALLOW_UNSAFE_ARGS=1`` (process
environment only; never settable through the API or runtime settings). Flags LlamaMan sets itself
(model, host, port, API key, ...) stay refused even then: passing them again would fight LlamaMan.

llama-server also reads every flag from a ``LLAMA_ARG_*`` environment variable; those never reach a
server because servers start with an allow-listed environment (see :func:`child_environment`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from llamaman.instances.llama_server_flags import LLAMA_SERVER_FLAGS

ALLOW_UNSAFE_ENV = "LLAMAMAN_ALLOW_UNSAFE_ARGS"


class Kind(Enum):
    TUNE = "tuning"
    FILE = "reads a file"
    MANAGED = "set by LlamaMan"
    SERVES = "serves files over HTTP"
    TOOLS = "runs tools on the server"
    NETWORK = "reaches other hosts over the network"
    WRITES = "writes files on the server"
    ACCESS = "changes who can reach the server"
    EXITS = "prints information and exits instead of serving"
    RUNTIME = "lets callers change the server's settings at run time"


# Why a refused flag is refused, as the user reads it.
_WHY = {
    Kind.SERVES: "it serves files from the server over HTTP",
    Kind.TOOLS: "it lets callers run tools (shell commands, file access) on the server",
    Kind.NETWORK: "it makes the server reach other hosts over the network",
    Kind.WRITES: "it writes files wherever it is told",
    Kind.ACCESS: "it changes who can reach the server",
    Kind.EXITS: "it makes llama-server print information and exit instead of serving",
    Kind.RUNTIME: "it lets any caller change the server's settings at run time",
}

# Refused flags with a safe way to get what they do.
_INSTEAD = {"--rpc": "; list registered workers (GET /api/workers) in the rpc_workers setting instead"}

# Flags LlamaMan sets from the launch settings → the setting to use instead.
MANAGED: dict[str, str] = {
    "-m": "model_path",
    "--model": "model_path",
    "--host": "the instance's host",
    "--port": "port",
    "-c": "ctx_size",
    "--ctx-size": "ctx_size",
    "-ngl": "n_gpu_layers",
    "--gpu-layers": "n_gpu_layers",
    "--n-gpu-layers": "n_gpu_layers",
    "-np": "parallel",
    "--parallel": "parallel",
    "-t": "threads",
    "--threads": "threads",
    "--models-dir": "router mode (not supported per instance)",
    "--models-max": "router mode (not supported per instance)",
    "--models-preset": "router mode (not supported per instance)",
    "--models-autoload": "router mode (not supported per instance)",
    "--no-models-autoload": "router mode (not supported per instance)",
    "-a": "the model's name (LlamaMan names the model it serves)",
    "--alias": "the model's name (LlamaMan names the model it serves)",
    "--api-key": "LlamaMan's own per-server key (clients use LlamaMan's API keys)",
    "--api-key-file": "LlamaMan's own per-server key (clients use LlamaMan's API keys)",
    "--api-prefix": "the paths LlamaMan relays to (llama-server must serve at its root)",
}

_T, _F, _S, _X, _N, _W, _A, _E, _R = (
    Kind.TUNE,
    Kind.FILE,
    Kind.SERVES,
    Kind.TOOLS,
    Kind.NETWORK,
    Kind.WRITES,
    Kind.ACCESS,
    Kind.EXITS,
    Kind.RUNTIME,
)

# Every flag of LLAMA_SERVER_FLAGS (a test fails when llama-server gains one not classified here).
# Managed flags are listed in MANAGED and classified MANAGED automatically.
_CLASSES: dict[Kind, tuple[str, ...]] = {
    _F: (
        # Paths read by the server: allowed inside MODELS_DIR only.
        "--chat-template-file", "--control-vector", "--control-vector-scaled", "--grammar-file",
        "--json-schema-file", "-jf", "--lora", "--lora-scaled", "--model-draft", "-md",
        "--spec-draft-model", "--lookup-cache-static", "-lcs", "--mmproj", "-mm",
    ),
    _S: (
        "--path", "--webui", "--ui", "--ui-config", "--ui-config-file", "--webui-config",
        "--webui-config-file", "--media-path",
    ),
    _X: (
        "--tools", "--tools-runtime", "--agent", "-ag", "--mcp-servers-config", "--mcp-servers-json",
    ),
    _N: (
        "--rpc", "-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "-hfd", "-hfrd", "--hf-repo-draft",
        "-hft", "--hf-token", "--model-url", "-mu", "--mmproj-url", "-mmu", "--docker-repo", "-dr",
        "--spec-draft-hf", "--webui-mcp-proxy", "--ui-mcp-proxy", "--mmproj-auto",
        # Presets that download their models from Hugging Face.
        "--embd-gemma-default", "--fim-qwen-1.5b-default", "--fim-qwen-14b-spec",
        "--fim-qwen-30b-default", "--fim-qwen-3b-default", "--fim-qwen-7b-default",
        "--fim-qwen-7b-spec", "--gpt-oss-120b-default", "--gpt-oss-20b-default",
        "--vision-gemma-12b-default", "--vision-gemma-4b-default",
    ),
    _W: ("--log-file", "--slot-save-path", "--log-prompts-dir", "--lookup-cache-dynamic", "-lcd"),
    _A: (
        "--ssl-cert-file", "--ssl-key-file", "--cors-credentials", "--cors-headers", "--cors-methods",
        "--cors-origins", "--reuse-port",
    ),
    _E: (
        "--help", "-h", "--usage", "--version", "--list-devices", "--cache-list", "-cl",
        "--completion-bash",
    ),
    _R: ("--props",),
    _T: (
        "--adaptive-decay", "--adaptive-target", "--no-agent", "-no-ag", "--backend-sampling", "-bs",
        "--batch-size", "-b", "--ubatch-size", "-ub", "--cache-idle-slots", "--no-cache-idle-slots",
        "--cache-prompt", "--no-cache-prompt", "--cache-ram", "-cram", "--cache-reuse",
        "--cache-type-k", "-ctk", "--cache-type-k-draft", "-ctkd", "--cache-type-v", "-ctv",
        "--cache-type-v-draft", "-ctvd", "--chat-template", "--chat-template-kwargs", "--check-tensors",
        "--checkpoint-min-step", "-cms", "--cont-batching", "-cb", "--no-cont-batching", "-nocb",
        "--context-shift", "--no-context-shift", "--control-vector-layer-range",
        "--no-cors-credentials", "--cpu-mask", "-C", "--cpu-mask-batch", "-Cb", "--cpu-mask-batch-draft",
        "-Cbd", "--cpu-mask-draft", "-Cd", "--cpu-moe", "-cmoe", "--cpu-moe-draft", "-cmoed",
        "--cpu-range", "-Cr", "--cpu-range-batch", "-Crb", "--cpu-range-draft", "-Crd", "--cpu-strict",
        "--cpu-strict-batch", "--cpu-strict-batch-draft", "--cpu-strict-draft", "--ctx-checkpoints",
        "-ctxcp", "--defrag-thold", "-dt", "--device", "-dev", "--device-draft", "-devd", "--direct-io",
        "-dio", "--no-direct-io", "-ndio", "--draft", "--draft-max", "--draft-min", "--draft-n",
        "--draft-n-min", "--draft-p-min", "--draft-p-split", "--dry-allowed-length", "--dry-base",
        "--dry-multiplier", "--dry-penalty-last-n", "--dry-sequence-breaker", "--dynatemp-exp",
        "--dynatemp-range", "--embd-normalize", "--embedding", "--embeddings", "--escape", "-e",
        "--no-escape", "--fit", "-fit", "--fit-ctx", "-fitc", "--fit-target", "-fitt", "--flash-attn",
        "-fa", "--frequency-penalty", "--gpu-layers-draft", "--n-gpu-layers-draft", "-ngld", "--grammar",
        "--ignore-eos", "--image-max-tokens", "--image-min-tokens", "--jinja", "--no-jinja",
        "--json-schema", "-j", "--keep", "--kv-offload", "-kvo", "--no-kv-offload", "-nkvo",
        "--kv-unified", "-kvu", "--no-kv-unified", "-no-kvu", "--load-mode", "-lm", "--log-colors",
        "--log-disable", "--log-prefix", "--no-log-prefix", "--log-timestamps", "--no-log-timestamps",
        "--log-verbose", "--log-verbosity", "-lv", "--verbose", "-v", "--verbosity", "--logit-bias",
        "-l", "--lora-init-without-apply", "--main-gpu", "-mg", "--metrics", "--min-p", "--mirostat",
        "--mirostat-ent", "--mirostat-lr", "--mlock", "--mmap", "--no-mmap", "--no-mmproj",
        "--no-mmproj-auto", "--mmproj-offload", "--no-mmproj-offload", "--mtmd-batch-max-tokens",
        "--n-cpu-moe", "-ncmoe", "--n-cpu-moe-draft", "-ncmoed", "--n-predict", "--predict", "-n",
        "--no-host", "--no-op-offload", "--op-offload", "--no-perf", "--perf",
        "--no-prefill-assistant", "--prefill-assistant", "--no-reasoning-preserve",
        "--reasoning-preserve", "--no-repack", "-nr", "--repack", "--no-skip-chat-parsing",
        "--skip-chat-parsing", "--no-slots", "--slots", "--spec-default", "--no-spec-draft-backend-sampling",
        "--spec-draft-backend-sampling", "--no-ui", "--no-webui", "--no-ui-mcp-proxy",
        "--no-webui-mcp-proxy", "--no-warmup", "--warmup", "--numa", "--offline", "--override-kv",
        "--override-tensor", "-ot", "--override-tensor-draft", "-otd", "--poll", "--poll-batch",
        "--poll-batch-draft", "--poll-draft", "--pooling", "--presence-penalty", "--prio",
        "--prio-batch", "--prio-batch-draft", "--prio-draft", "--reasoning", "-rea",
        "--reasoning-budget", "--reasoning-budget-message", "--reasoning-effort", "--reasoning-format",
        "--repeat-last-n", "--repeat-penalty", "--rerank", "--reranking", "--reverse-prompt", "-r",
        "--rope-freq-base", "--rope-freq-scale", "--rope-scale", "--rope-scaling", "--sampler-seq",
        "--samplers", "--sampling-seq", "--seed", "-s", "--sleep-idle-seconds",
        "--slot-prompt-similarity", "-sps", "--spec-draft-cpu-mask", "--spec-draft-cpu-mask-batch",
        "--spec-draft-cpu-moe", "--spec-draft-cpu-range", "--spec-draft-cpu-strict",
        "--spec-draft-cpu-strict-batch", "--spec-draft-device", "--spec-draft-n-cpu-moe",
        "--spec-draft-n-max", "--spec-draft-n-min", "--spec-draft-ncmoe", "--spec-draft-ngl",
        "--spec-draft-override-tensor", "--spec-draft-p-min", "--spec-draft-p-split", "--spec-draft-poll",
        "--spec-draft-poll-batch", "--spec-draft-prio", "--spec-draft-prio-batch",
        "--spec-draft-threads", "--spec-draft-threads-batch", "--spec-draft-type-k",
        "--spec-draft-type-v", "--spec-ngram-map-k-min-hits", "--spec-ngram-map-k-size-m",
        "--spec-ngram-map-k-size-n", "--spec-ngram-map-k4v-min-hits", "--spec-ngram-map-k4v-size-m",
        "--spec-ngram-map-k4v-size-n", "--spec-ngram-min-hits", "--spec-ngram-mod-n-match",
        "--spec-ngram-mod-n-max", "--spec-ngram-mod-n-min", "--spec-ngram-simple-min-hits",
        "--spec-ngram-simple-size-m", "--spec-ngram-simple-size-n", "--spec-ngram-size-m",
        "--spec-ngram-size-n", "--spec-type", "--special", "-sp", "--split-mode", "-sm", "--spm-infill",
        "--sse-ping-interval", "--swa-checkpoints", "--swa-full", "--tags", "--temp", "--temperature",
        "--tensor-split", "-ts", "--threads-batch", "-tb", "--threads-batch-draft", "-tbd",
        "--threads-draft", "-td", "--threads-http", "--timeout", "-to", "--top-k", "--top-n-sigma",
        "--top-nsigma", "--top-p", "--typical", "--typical-p", "--xtc-probability", "--xtc-threshold",
        "--yarn-attn-factor", "--yarn-beta-fast", "--yarn-beta-slow", "--yarn-ext-factor",
        "--yarn-orig-ctx",
    ),
}  # fmt: skip

FLAG_KINDS: dict[str, Kind] = {flag: kind for kind, flags in _CLASSES.items() for flag in flags}
FLAG_KINDS.update(dict.fromkeys(MANAGED, Kind.MANAGED))

# Flags whose value is a list: "a.gguf,b.gguf" (LoRA) or "a.gguf:0.5,b.gguf:1" (scaled).
_LIST_PATHS = {"--lora", "--control-vector"}
_SCALED_PATHS = {"--lora-scaled", "--control-vector-scaled"}


class LaunchPolicyError(ValueError):
    """A launch argument the policy refuses; the message names the flag and why."""


@dataclass(frozen=True)
class Policy:
    """The rules one LlamaMan applies: where file-taking flags may point, and whether it is lifted."""

    models_dir: Path | None = None
    allow_unsafe: bool = False


# What LaunchSettings validation checks against (set by the supervisor from its Settings); the
# supervisor checks again with its own settings right before a spawn, so this only makes refusals
# early (422 at the API) and needs no per-request plumbing.
_current = Policy()


def configure(models_dir: Path | None, allow_unsafe: bool) -> None:
    global _current
    _current = Policy(models_dir.resolve() if models_dir is not None else None, allow_unsafe)


def canonical(flag: str) -> str:
    """llama-server reads ``--a_b`` as ``--a-b``; compare flags in that form."""
    return flag.replace("_", "-") if flag.startswith("--") else flag


def _arity(flag: str) -> int:
    n = LLAMA_SERVER_FLAGS.get(flag, 0)
    # The generated table counts words of multi-word placeholders (-ot "<pattern>=<type>,..."):
    # every llama-server flag takes at most two values.
    return min(n, 1) if n != 2 else 2


def _looks_like_flag(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not token[1].isdigit() and token[1] != "."


def check_args(argv: list[str], policy: Policy | None = None) -> list[str]:
    """Check extra llama-server arguments; returns them with file paths made absolute inside
    MODELS_DIR (so the server opens exactly the file that was checked). Raises LaunchPolicyError."""
    policy = policy or _current
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not _looks_like_flag(token):
            raise LaunchPolicyError(
                f"extra_args: unexpected value {token!r} (values must follow the flag they belong to)"
            )
        name, eq, inline = token.partition("=")
        flag = canonical(name)
        kind = FLAG_KINDS.get(flag)
        if kind is None or flag not in LLAMA_SERVER_FLAGS:
            raise LaunchPolicyError(f"extra_args: {name} is not a llama-server flag")
        if kind is Kind.MANAGED:
            raise LaunchPolicyError(f"extra_args may not set {name}: use the {MANAGED[flag]} setting instead")
        if kind not in (Kind.TUNE, Kind.FILE) and not policy.allow_unsafe:
            raise LaunchPolicyError(
                f"extra_args may not use {name}: {_WHY[kind]}{_INSTEAD.get(flag, '')} "
                f"(an operator who trusts every caller can allow it with {ALLOW_UNSAFE_ENV}=1)"
            )
        arity = _arity(flag)
        values: list[str] = []
        if eq:
            values = [inline]
            if arity == 0:
                raise LaunchPolicyError(f"extra_args: {flag} takes no value")
            if arity == 2:
                if i >= len(argv):
                    raise LaunchPolicyError(f"extra_args: {flag} needs two values")
                values.append(argv[i])
                i += 1
        elif arity == -1:
            if i < len(argv) and not _looks_like_flag(argv[i]):
                values = [argv[i]]
                i += 1
        elif arity > 0:
            if i + arity > len(argv):
                raise LaunchPolicyError(f"extra_args: {flag} needs a value")
            values = argv[i : i + arity]
            i += arity
        if kind is Kind.FILE and not policy.allow_unsafe:
            values = [_check_file_value(flag, v, policy) for v in values]
        out.append(flag)
        out.extend(values)
    return out


def _check_file_value(flag: str, value: str, policy: Policy) -> str:
    if flag in _LIST_PATHS:
        return ",".join(check_path(p, policy, flag) for p in value.split(",") if p)
    if flag in _SCALED_PATHS:
        parts = []
        for item in value.split(","):
            path, colon, scale = item.rpartition(":")
            if not colon:
                path, scale = item, ""
            parts.append(check_path(path, policy, flag) + (f":{scale}" if colon else ""))
        return ",".join(parts)
    return check_path(value, policy, flag)


def check_path(value: str, policy: Policy | None = None, flag: str = "path") -> str:
    """A file for llama-server to read: inside MODELS_DIR once symlinks are resolved. Relative paths
    are taken relative to MODELS_DIR; the answer is the absolute path to pass on."""
    policy = policy or _current
    if not value or "\x00" in value:
        raise LaunchPolicyError(f"extra_args: {flag} needs a file path inside the models folder")
    raw = Path(value).expanduser() if value.startswith("~") else Path(value)
    if ".." in raw.parts:
        raise LaunchPolicyError(f"extra_args: {flag} {value!r}: '..' is not allowed in paths")
    if policy.models_dir is None:
        if raw.is_absolute():
            # Without a models folder to compare against, only relative paths are accepted here;
            # the supervisor decides for good with its own folder before the server starts.
            raise LaunchPolicyError(
                f"extra_args: {flag} {value!r}: give the path relative to the models folder"
            )
        return value
    root = policy.models_dir
    candidate = raw if raw.is_absolute() else root / raw
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError):
        raise LaunchPolicyError(f"extra_args: {flag} {value!r} cannot be resolved") from None
    if not resolved.is_relative_to(root):
        raise LaunchPolicyError(
            f"extra_args: {flag} {value!r} is outside the models folder; llama-server may only read "
            "files under MODELS_DIR"
        )
    return str(resolved)


# --- the environment of a llama-server -----------------------------------------------------------

# What llama.cpp and the GPU runtimes read; nothing else of LlamaMan's environment reaches a server.
_ENV_KEEP = {
    "PATH", "LD_LIBRARY_PATH", "HOME", "TMPDIR", "TMP", "TEMP", "LANG", "LANGUAGE", "TZ", "USER",
    "LOGNAME", "SHELL", "TERM", "SYSTEMROOT", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
    "OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "KMP_AFFINITY", "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY",
}  # fmt: skip
_ENV_KEEP_PREFIXES = (
    "LC_", "CUDA_", "HIP_", "ROCR_", "ROCM_", "HSA_", "GPU_DEVICE_ORDINAL", "GGML_", "VK_", "NVIDIA_",
    "__NV_", "__GL", "ONEAPI_", "SYCL_", "ZE_", "MESA_", "AMD_", "OCL_", "METAL_", "MUSA_", "ASCEND_",
    "DRI_",
)  # fmt: skip
ENV_API_KEY = "LLAMA_API_KEY"


def child_environment(parent: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a llama-server: the allow-listed part of ``parent`` plus ``extra``.

    LlamaMan's secrets (admin password, API keys, SECRET_KEY, DATABASE_URL, HF_TOKEN) and any
    ``LLAMA_ARG_*`` (llama-server's flags by another name) never pass."""
    env = {
        k: v
        for k, v in parent.items()
        if (k in _ENV_KEEP or k.startswith(_ENV_KEEP_PREFIXES)) and not k.startswith("LLAMA_")
    }
    env.update(extra)
    return env


def new_server_key() -> str:
    return "llamaman-internal-" + secrets.token_urlsafe(24)


__all__ = [
    "ALLOW_UNSAFE_ENV",
    "ENV_API_KEY",
    "FLAG_KINDS",
    "MANAGED",
    "Kind",
    "LaunchPolicyError",
    "Policy",
    "check_args",
    "check_path",
    "child_environment",
    "configure",
    "new_server_key",
]

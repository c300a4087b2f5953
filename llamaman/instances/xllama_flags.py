"""llama-server's command line, parsed without argparse (which reads an unknown ``-ncmoe 4`` as
``-n cmoe``), for the xllamacpp launcher."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

PROG = "llamaman.instances.xllama_launcher"
DEFAULT_PORT = 8080  # llama-server's default; xllamacpp's own default is a random port
# Any number above a model's layer count offloads every layer, whatever llama.cpp version reads it.
ALL_LAYERS = 999
UINT32_MAX = 0xFFFFFFFF


class LaunchError(Exception):
    """A flag value or combination the embedded server can't run with."""


# --- value converters (a ValueError becomes a usage error naming the flag) ------------------------


def _choice(mapping: dict[str, Any], what: str) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        key = value.strip().lower()
        if key not in mapping:
            raise ValueError(f"{what} must be one of {', '.join(mapping)}")
        return mapping[key]

    convert.__name__ = what
    return convert


def _on_off(value: str) -> bool:
    return _choice({"on": True, "off": False, "1": True, "0": False, "true": True, "false": False}, "on|off")(
        value
    )


def _gpu_layers(value: str) -> int:
    v = value.strip().lower()
    if v == "auto":
        return -1
    if v == "all":
        return ALL_LAYERS
    return int(v)


def _seed(value: str) -> int:
    n = int(value)
    # llama.cpp spells "random" as -1 on the command line and as UINT32_MAX in the struct.
    return UINT32_MAX if n < 0 else n


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _floats(value: str) -> list[float]:
    return [float(part) for part in value.replace("/", ",").split(",") if part.strip()]


def _read_text(value: str) -> str:
    return Path(value).expanduser().read_text(encoding="utf-8")


def _key_file(value: str) -> list[str]:
    lines = Path(value).expanduser().read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _template_kwargs(value: str) -> dict[str, str]:
    data = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError("--chat-template-kwargs must be a JSON object")
    # common_params keeps each value as JSON text, exactly as llama-server stores it.
    return {str(k): json.dumps(v) for k, v in data.items()}


def _lora_scaled(value: str) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for item in _csv(value):
        path, sep, scale = item.rpartition(":")
        if not sep:
            raise ValueError("--lora-scaled expects FNAME:SCALE,...")
        out.append((path, float(scale)))
    return out


# --- the flag table ---------------------------------------------------------------------------------

# Each flag stores into a destination: a dotted attribute path on CommonParams, or a name starting
# with "_" that apply_args() handles because it touches more than one field or needs post-processing.
_SIMPLE: list[tuple[tuple[str, ...], str, Callable[[str], Any]]] = [
    (("-m", "--model"), "model.path", str),
    (("--host",), "_host", str),
    (("--port",), "port", int),
    (("-c", "--ctx-size"), "n_ctx", int),
    (("-n", "--predict", "--n-predict"), "n_predict", int),
    (("-b", "--batch-size"), "n_batch", int),
    (("-ub", "--ubatch-size"), "n_ubatch", int),
    (("--keep",), "n_keep", int),
    (("-ngl", "--gpu-layers", "--n-gpu-layers"), "n_gpu_layers", _gpu_layers),
    (("-sm", "--split-mode"), "_split_mode", str),
    (("-ts", "--tensor-split"), "_tensor_split", _floats),
    (("-mg", "--main-gpu"), "main_gpu", int),
    (("-t", "--threads"), "_threads", int),
    (("-tb", "--threads-batch"), "_threads_batch", int),
    (("--threads-http",), "n_threads_http", int),
    (("-np", "--parallel"), "n_parallel", int),
    (("-a", "--alias"), "_alias", _csv),
    (("--tags",), "_tags", _csv),
    (("--pooling",), "_pooling", str),
    (("--embd-normalize",), "embd_normalize", int),
    (("-mm", "--mmproj"), "mmproj.path", str),
    (("--image-min-tokens",), "image_min_tokens", int),
    (("--image-max-tokens",), "image_max_tokens", int),
    (("--chat-template",), "chat_template", str),
    (("--chat-template-file",), "chat_template", _read_text),
    (("--chat-template-kwargs",), "default_template_kwargs", _template_kwargs),
    (("--reasoning-format",), "_reasoning_format", str),
    (("-rea", "--reasoning"), "enable_reasoning", _choice({"on": 1, "off": 0, "auto": -1}, "on|off|auto")),
    (("--reasoning-budget",), "sampling.reasoning_budget_tokens", int),
    (("-ctk", "--cache-type-k"), "_cache_type_k", str),
    (("-ctv", "--cache-type-v"), "_cache_type_v", str),
    (("-cram", "--cache-ram"), "cache_ram_mib", int),
    (("--cache-reuse",), "n_cache_reuse", int),
    (("-lm", "--load-mode"), "_load_mode", str),
    (("--numa",), "_numa", str),
    (("--rope-scaling",), "_rope_scaling", str),
    (("--rope-scale",), "_rope_scale", float),
    (("--rope-freq-base",), "rope_freq_base", float),
    (("--rope-freq-scale",), "rope_freq_scale", float),
    (("--yarn-orig-ctx",), "yarn_orig_ctx", int),
    (("--yarn-ext-factor",), "yarn_ext_factor", float),
    (("--yarn-attn-factor",), "yarn_attn_factor", float),
    (("--yarn-beta-slow",), "yarn_beta_slow", float),
    (("--yarn-beta-fast",), "yarn_beta_fast", float),
    (("--lora",), "_lora", _csv),
    (("--lora-scaled",), "_lora_scaled", _lora_scaled),
    (("--api-key",), "_api_keys", _csv),
    (("--api-key-file",), "_api_keys", _key_file),
    (("--api-prefix",), "api_prefix", str),
    (("--ssl-key-file",), "ssl_file_key", str),
    (("--ssl-cert-file",), "ssl_file_cert", str),
    (("-to", "--timeout"), "_timeout", int),
    (("--sse-ping-interval",), "sse_ping_interval", int),
    (("--sleep-idle-seconds",), "sleep_idle_seconds", int),
    (("--slot-save-path",), "slot_save_path", str),
    (("-sps", "--slot-prompt-similarity"), "slot_prompt_similarity", float),
    (("--media-path",), "media_path", str),
    (("-fitc", "--fit-ctx"), "fit_params_min_ctx", int),
    (("-lv", "--verbosity", "--log-verbosity"), "verbosity", int),
    # Sampling defaults for requests that don't set their own.
    (("-s", "--seed"), "sampling.seed", _seed),
    (("--temp", "--temperature"), "sampling.temp", float),
    (("--top-k",), "sampling.top_k", int),
    (("--top-p",), "sampling.top_p", float),
    (("--min-p",), "sampling.min_p", float),
    (("--typical", "--typical-p"), "sampling.typ_p", float),
    (("--repeat-last-n",), "sampling.penalty_last_n", int),
    (("--repeat-penalty",), "sampling.penalty_repeat", float),
    (("--presence-penalty",), "sampling.penalty_present", float),
    (("--frequency-penalty",), "sampling.penalty_freq", float),
    (("--dynatemp-range",), "sampling.dynatemp_range", float),
    (("--dynatemp-exp",), "sampling.dynatemp_exponent", float),
    (("--mirostat",), "sampling.mirostat", int),
    (("--mirostat-lr",), "sampling.mirostat_eta", float),
    (("--mirostat-ent",), "sampling.mirostat_tau", float),
    (("--xtc-probability",), "sampling.xtc_probability", float),
    (("--xtc-threshold",), "sampling.xtc_threshold", float),
    (("--dry-multiplier",), "sampling.dry_multiplier", float),
    (("--dry-base",), "sampling.dry_base", float),
    (("--dry-allowed-length",), "sampling.dry_allowed_length", int),
    (("--dry-penalty-last-n",), "sampling.dry_penalty_last_n", int),
    (("--min-keep",), "sampling.min_keep", int),
    (("--n-probs",), "sampling.n_probs", int),
]

# Switches: (names, destination, value stored). Pairs like --jinja/--no-jinja share a destination
# and the last one given wins, as in llama-server.
_SWITCHES: list[tuple[tuple[str, ...], str, Any]] = [
    (("--embedding", "--embeddings"), "embedding", True),
    (("--rerank", "--reranking"), "_rerank", True),
    (("--metrics",), "endpoint_metrics", True),
    (("--props",), "endpoint_props", True),
    (("--slots",), "endpoint_slots", True),
    (("--no-slots",), "endpoint_slots", False),
    (("--jinja",), "use_jinja", True),
    (("--no-jinja",), "use_jinja", False),
    (("--ui", "--webui"), "ui", True),
    (("--no-ui", "--no-webui"), "ui", False),
    (("--cont-batching", "-cb"), "cont_batching", True),
    (("--no-cont-batching", "-nocb"), "cont_batching", False),
    (("--context-shift",), "ctx_shift", True),
    (("--no-context-shift",), "ctx_shift", False),
    (("--cache-prompt",), "cache_prompt", True),
    (("--no-cache-prompt",), "cache_prompt", False),
    (("-kvu", "--kv-unified"), "kv_unified", True),
    (("-no-kvu", "--no-kv-unified"), "kv_unified", False),
    (("-kvo", "--kv-offload"), "no_kv_offload", False),
    (("-nkvo", "--no-kv-offload"), "no_kv_offload", True),
    (("--warmup",), "warmup", True),
    (("--no-warmup",), "warmup", False),
    (("--swa-full",), "swa_full", True),
    (("--check-tensors",), "check_tensors", True),
    (("--perf",), "no_perf", False),
    (("--no-perf",), "no_perf", True),
    (("--offline",), "offline", True),
    (("--reuse-port",), "reuse_port", True),
    (("--mmproj-auto",), "no_mmproj", False),
    (("--no-mmproj", "--no-mmproj-auto"), "no_mmproj", True),
    (("--mmproj-offload",), "mmproj_use_gpu", True),
    (("--no-mmproj-offload",), "mmproj_use_gpu", False),
    (("--prefill-assistant",), "prefill_assistant", True),
    (("--no-prefill-assistant",), "prefill_assistant", False),
    (("--lora-init-without-apply",), "lora_init_without_apply", True),
    (("--mmap",), "_mmap", True),
    (("--no-mmap",), "_mmap", False),
    (("--mlock",), "_mlock", True),
    (("-v", "--verbose", "--log-verbose"), "verbosity", 1_000_000),
]

_FLASH_ATTN = {"on": "ENABLED", "off": "DISABLED", "auto": "AUTO"}

# Flags with an optional value ("-fa" alone meant "on" in older builds).
_OPTIONAL_VALUE: list[tuple[tuple[str, ...], str, Callable[[str], Any], str]] = [
    (("-fa", "--flash-attn"), "_flash_attn", _choice(_FLASH_ATTN, "on|off|auto"), "on"),
    (("-fit", "--fit"), "fit_params", _on_off, "on"),
]

# Output cosmetics of llama-server's own logger; nothing to map, and not worth a warning.
_IGNORED_QUIETLY: list[tuple[str, ...]] = [
    ("--log-colors",),
    ("--log-prefix", "--no-log-prefix"),
    ("--log-timestamps", "--no-log-timestamps"),
]

_ROUTER_FLAGS = (
    "--models-dir",
    "--models-preset",
    "--models-max",
    "--models-autoload",
    "--no-models-autoload",
)


@dataclass(frozen=True)
class _Option:
    dest: str
    kind: Literal["value", "switch", "optional", "ignored"]
    convert: Callable[[str], Any] = str
    const: Any = None
    multi: bool = False


_MULTI = frozenset({"_api_keys", "_lora", "_lora_scaled"})
_OPTIONAL_WORDS = frozenset({"on", "off", "auto", "1", "0", "true", "false"})
_NEGATIVE_NUMBER = re.compile(r"^-\d+(\.\d*)?$|^-\.\d+$")


def _options() -> dict[str, _Option]:
    table: dict[str, _Option] = {}
    for names, dest, convert in _SIMPLE:
        for name in names:
            table[name] = _Option(dest, "value", convert, multi=dest in _MULTI)
    for names, dest, value in _SWITCHES:
        for name in names:
            table[name] = _Option(dest, "switch", const=value)
    for names, dest, convert, const in _OPTIONAL_VALUE:
        for name in names:
            table[name] = _Option(dest, "optional", convert, const=convert(const))
    for names in _IGNORED_QUIETLY:
        for name in names:
            table[name] = _Option("_ignored", "ignored")
    for name in _ROUTER_FLAGS:
        table[name] = _Option("_router", "ignored", const=True)
    for name in ("-h", "--help", "--usage"):
        table[name] = _Option("_help", "switch", const=True)
    table["--version"] = _Option("_version", "switch", const=True)
    return table


OPTIONS = _options()


def is_flag(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not _NEGATIVE_NUMBER.match(token)


def parse_flags(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """llama-server style flags → ({destination: value}, unsupported tokens).

    Hand-rolled rather than argparse: argparse reads an unknown "-ncmoe 4" as "-n cmoe", and only
    exact names may match here, as in llama-server.
    """
    ns: dict[str, Any] = {}
    unknown: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        name, has_inline, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        option = OPTIONS.get(name)
        if option is None:
            unknown.append(token)
            # llama-server takes no positional arguments, so a plain word here is this flag's value.
            if not has_inline and i < len(argv) and not is_flag(argv[i]):
                unknown.append(argv[i])
                i += 1
            continue
        raw: str | None
        if option.kind == "switch":
            ns[option.dest] = option.const
            continue
        if has_inline:
            raw = inline
        elif option.kind == "optional":
            takes_next = i < len(argv) and argv[i].lower() in _OPTIONAL_WORDS
            raw = argv[i] if takes_next else None
            i += takes_next
        elif option.kind == "ignored":
            raw = argv[i] if i < len(argv) and not is_flag(argv[i]) else None
            i += raw is not None
        else:
            if i >= len(argv):
                raise LaunchError(f"{name} needs a value")
            raw = argv[i]
            i += 1
        if option.kind == "ignored":
            ns[option.dest] = option.const if raw is None else raw
            continue
        if raw is None:
            value = option.const
        else:
            try:
                value = option.convert(raw)
            except (ValueError, OSError) as exc:
                raise LaunchError(f"{name}: invalid value {raw!r} ({exc})") from None
        if option.multi:
            ns.setdefault(option.dest, []).append(value)
        else:
            ns[option.dest] = value
    return ns, unknown

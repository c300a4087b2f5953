"""Run llama.cpp's HTTP server through xllamacpp with llama-server's command line.

``python -m llamaman.xllama_launcher -m model.gguf --port 8001 -c 4096 ...`` behaves like
``llama-server`` for the flags LlamaMan and its users pass, so the supervisor can treat it as one
more binary. Flags xllamacpp has no field for are reported on stderr and ignored rather than
refused: a model should still start when its saved options include something only newer
llama-server builds know. Router mode is not available (xllamacpp builds the server without it).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import xllamacpp

PROG = "llamaman.xllama_launcher"
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


def _is_flag(token: str) -> bool:
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
            if not has_inline and i < len(argv) and not _is_flag(argv[i]):
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
            raw = argv[i] if i < len(argv) and not _is_flag(argv[i]) else None
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


def usage() -> str:
    lines = [
        f"usage: python -m {PROG} -m MODEL [llama-server options]",
        "",
        "Runs llama.cpp's server in-process through xllamacpp. Supported llama-server options:",
    ]
    groups: dict[str, list[str]] = {}
    for name, option in OPTIONS.items():
        if option.dest not in ("_ignored", "_router", "_help"):
            groups.setdefault(option.dest, []).append(name)
    lines += [f"  {', '.join(names)}" for names in groups.values()]
    lines.append("Other options are reported and ignored; router mode (--models-dir) is not available.")
    return "\n".join(lines) + "\n"


# --- applying parsed flags ----------------------------------------------------------------------


# destination → (CommonParams field, xllamacpp enum, member prefix, flag for messages)
_ENUM_FLAGS = {
    "_pooling": ("pooling_type", "llama_pooling_type", "LLAMA_POOLING_TYPE_", "--pooling"),
    "_split_mode": ("split_mode", "llama_split_mode", "LLAMA_SPLIT_MODE_", "--split-mode"),
    "_cache_type_k": ("cache_type_k", "ggml_type", "GGML_TYPE_", "--cache-type-k"),
    "_cache_type_v": ("cache_type_v", "ggml_type", "GGML_TYPE_", "--cache-type-v"),
    "_load_mode": ("load_mode", "llama_load_mode", "LLAMA_LOAD_MODE_", "--load-mode"),
    "_numa": ("numa", "ggml_numa_strategy", "GGML_NUMA_STRATEGY_", "--numa"),
    "_rope_scaling": (
        "rope_scaling_type",
        "llama_rope_scaling_type",
        "LLAMA_ROPE_SCALING_TYPE_",
        "--rope-scaling",
    ),
    "_reasoning_format": (
        "reasoning_format",
        "common_reasoning_format",
        "COMMON_REASONING_FORMAT_",
        "--reasoning-format",
    ),
}
# Command-line spellings whose enum member is named differently.
_ENUM_ALIASES = {"dio": "direct_io"}


def _enum(xl: Any, enum_name: str, prefix: str, value: str, flag: str) -> Any:
    enum = getattr(xl, enum_name)
    word = value.strip().lower()
    key = prefix + _ENUM_ALIASES.get(word, word).upper().replace("-", "_").replace("+", "_")
    try:
        return enum.__members__[key]
    except KeyError:
        names = sorted(m[len(prefix) :].lower() for m in enum.__members__ if m.startswith(prefix))
        raise LaunchError(f"{flag}: unknown value {value!r} (expected one of {', '.join(names)})") from None


def _set(params: Any, dotted: str, value: Any, warn: Callable[[str], None]) -> None:
    *parents, leaf = dotted.split(".")
    target = params
    for name in parents:
        target = getattr(target, name)
    try:
        setattr(target, leaf, value)
    except AttributeError:
        # Field names follow llama.cpp, which renames things; an older or newer xllamacpp may lack one.
        warn(f"this xllamacpp has no setting {dotted!r}; ignored")


def apply_args(
    ns: dict[str, Any], params: xllamacpp.CommonParams, xl: Any, warn: Callable[[str], None]
) -> None:
    """Store flags parsed by :func:`parse_flags` into ``params``."""
    if ns.get("_router"):
        raise LaunchError("router mode (--models-dir, --models-max, ...) is not available with xllamacpp")

    for dest, value in ns.items():
        if not dest.startswith("_"):
            _set(params, dest, value, warn)

    if "_host" in ns:
        _set(params, "hostnames", [ns["_host"]], warn)
    if "_alias" in ns:
        _set(params, "model_alias", set(ns["_alias"]), warn)
    if "_tags" in ns:
        _set(params, "model_tags", set(ns["_tags"]), warn)

    # llama-server: the batch thread count defaults to the generation thread count.
    threads = ns.get("_threads")
    threads_batch = ns.get("_threads_batch", threads)
    if threads is not None:
        params.cpuparams.n_threads = threads
    if threads_batch is not None:
        params.cpuparams_batch.n_threads = threads_batch

    if "_timeout" in ns:
        params.timeout_read = ns["_timeout"]
        params.timeout_write = ns["_timeout"]

    if "_api_keys" in ns:
        params.api_keys = [key for chunk in ns["_api_keys"] for key in chunk]

    if "_tensor_split" in ns:
        proportions = ns["_tensor_split"]
        width = len(params.tensor_split)
        if len(proportions) > width:
            raise LaunchError(f"--tensor-split: at most {width} devices")
        params.tensor_split = proportions + [0.0] * (width - len(proportions))

    loras = [(path, 1.0) for chunk in ns.get("_lora", []) for path in chunk]
    loras += [pair for chunk in ns.get("_lora_scaled", []) for pair in chunk]
    if loras:
        params.lora_adapters = [xl.CommonAdapterLoraInfo(path, scale) for path, scale in loras]

    if "_rope_scale" in ns:
        params.rope_freq_scale = 1.0 / ns["_rope_scale"]

    if ns.get("_rerank"):
        params.embedding = True
        params.pooling_type = xl.llama_pooling_type.LLAMA_POOLING_TYPE_RANK

    for dest, (field, enum_name, prefix, flag) in _ENUM_FLAGS.items():
        if dest in ns:
            _set(params, field, _enum(xl, enum_name, prefix, ns[dest], flag), warn)

    if "_flash_attn" in ns:
        params.flash_attn_type = xl.llama_flash_attn_type.__members__[
            f"LLAMA_FLASH_ATTN_TYPE_{ns['_flash_attn']}"
        ]

    # The deprecated --mmap/--no-mmap/--mlock pair folds into --load-mode, which wins when given.
    if ("_mmap" in ns or "_mlock" in ns) and "_load_mode" not in ns:
        mmap, mlock = ns.get("_mmap", True), ns.get("_mlock", False)
        mode = {
            (True, False): "MMAP",
            (True, True): "MMAP_MLOCK",
            (False, True): "MLOCK",
            (False, False): "NONE",
        }
        params.load_mode = xl.llama_load_mode.__members__[f"LLAMA_LOAD_MODE_{mode[(mmap, mlock)]}"]

    if not params.model.path:
        raise LaunchError("no model given (-m/--model)")


# --- running ------------------------------------------------------------------------------------


def _version_text(xl: Any) -> str:
    info = getattr(xl, "BUILD_INFO", {}) or {}
    compiler = info.get("compiler", "unknown compiler")
    target = info.get("build_target", "unknown target")
    return f"version: xllamacpp {getattr(xl, '__version__', 'unknown')}\nbuilt with {compiler} for {target}\n"


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def build_params(ns: dict[str, Any], xl: Any, warn: Callable[[str], None] = _warn) -> xllamacpp.CommonParams:
    params = xl.CommonParams()
    params.port = DEFAULT_PORT
    apply_args(ns, params, xl, warn)
    return params


def main(argv: Sequence[str] | None = None) -> int:
    try:
        ns, unknown = parse_flags(sys.argv[1:] if argv is None else argv)
    except LaunchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if ns.get("_help"):
        sys.stdout.write(usage())
        return 0
    try:
        import xllamacpp as xl
    except ImportError as exc:
        print(
            f"{PROG}: xllamacpp is not installed ({exc}); run `pip install 'llamaman[cpu]'`", file=sys.stderr
        )
        return 1
    if ns.get("_version"):
        # stderr, like llama-server, so version probes read both the same way.
        sys.stderr.write(_version_text(xl))
        return 0
    if unknown:
        _warn(f"ignoring options this launcher does not support: {' '.join(unknown)}")
    try:
        params = build_params(ns, xl)
    except (LaunchError, OSError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    # Constructing the server holds the GIL until the model is loaded, so Python handlers could not
    # run before then anyway; with the default dispositions a stop request during loading ends the
    # process at once instead of waiting for the load to finish.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        server = xl.Server(params)
    except RuntimeError as exc:
        print(f"{PROG}: error: {exc} (see the log above)", file=sys.stderr)
        return 1

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        # A second signal while shutting down ends the process without waiting.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print(f"{PROG}: serving on {server.listening_address}", file=sys.stderr, flush=True)
    # Short waits: the signal handler runs only when the main thread gets back to the interpreter.
    while not stop.wait(0.5):
        pass
    del server  # ~Server stops the HTTP loop and joins its thread
    return 0


if __name__ == "__main__":
    sys.exit(main())

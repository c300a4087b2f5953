"""Run llama.cpp's HTTP server through xllamacpp with llama-server's command line.

``python -m llamaman.instances.xllama_launcher -m model.gguf --port 8001 -c 4096 ...`` behaves like
``llama-server`` for the flags LlamaMan and its users pass, so the supervisor can treat it as one
more binary. Flags xllamacpp has no field for are reported on stderr and ignored rather than
refused: a model should still start when its saved options include something only newer
llama-server builds know. Router mode is not available (xllamacpp builds the server without it).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import xllamacpp

from llamaman.instances.llama_server_flags import LLAMA_SERVER_FLAGS
from llamaman.instances.xllama_flags import (
    DEFAULT_PORT,
    OPTIONS,
    PROG,
    LaunchError,
    is_flag,
    parse_flags,
)


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


def build_params(
    ns: dict[str, Any],
    xl: Any,
    warn: Callable[[str], None] = _warn,
    environ: dict[str, str] | None = None,
) -> xllamacpp.CommonParams:
    params = xl.CommonParams()
    params.port = DEFAULT_PORT
    env = os.environ if environ is None else environ
    if "_api_keys" not in ns and env.get("LLAMA_API_KEY"):
        # llama-server reads --api-key from LLAMA_API_KEY (which keeps the key out of `ps`); the
        # command line wins when both are given, as there.
        keys = [k.strip() for k in env["LLAMA_API_KEY"].split(",") if k.strip()]
        ns = {**ns, "_api_keys": [keys]}
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
    invalid = [t for t in unknown if is_flag(t) and t.partition("=")[0] not in LLAMA_SERVER_FLAGS]
    if invalid:
        # llama-server itself refuses a flag it does not know; so does its stand-in.
        print(f"{PROG}: error: invalid argument: {invalid[0]}", file=sys.stderr)
        return 2
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

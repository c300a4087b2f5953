"""Command line: flags override environment settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from typing import Any

from pydantic import ValidationError

from llamaman import __version__
from llamaman.app import LlamaMan
from llamaman.cluster import rpc_setup, rpc_worker
from llamaman.core.config import Settings
from llamaman.telemetry.loadtest import BenchError, BenchmarkParams, format_table, run_benchmark

# flag → settings alias (the environment variable of the same meaning)
_FLAGS: dict[str, tuple[str, type, str]] = {
    "host": ("LLAMAMAN_HOST", str, "address to listen on"),
    "port": ("LLAMAMAN_PORT", int, "UI and REST API port (default 5000)"),
    "proxy_port": (
        "LLAMAMAN_PROXY_PORT",
        int,
        "Ollama/OpenAI proxy port (default 42069; 0 = main port only)",
    ),
    "models_dir": ("MODELS_DIR", str, "folder of GGUF models"),
    "data_dir": ("DATA_DIR", str, "folder for the database, logs and secrets"),
    "logs_dir": ("LOGS_DIR", str, "folder for llama-server logs (default DATA_DIR/logs)"),
    "database_url": ("DATABASE_URL", str, "sqlite:///… or mysql+pymysql://user:pw@host/db"),
    "llama_server_bin": ("LLAMA_SERVER_BIN", str, "llama-server binary to use"),
    "max_models": ("LLAMAMAN_MAX_MODELS", int, "models the proxy keeps loaded (0 = no limit)"),
    "idle_timeout": ("LLAMAMAN_IDLE_TIMEOUT", float, "idle minutes before a proxy-started model sleeps"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="llamaman", description="Run local LLMs behind one Ollama/OpenAI endpoint."
    )
    p.add_argument("--version", action="version", version=f"llamaman {__version__}")
    for name, (env, typ, help_) in _FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None, help=f"{help_} [{env}]")
    p.add_argument("--native", action="store_true", help="open the UI in a desktop window (needs pywebview)")
    p.add_argument("--no-ui", action="store_true", help="serve only the APIs and the proxy")
    sub = p.add_subparsers(dest="command")
    b = sub.add_parser("bench", help="benchmark a model through the proxy or straight to its instance")
    b.add_argument("--model", required=True, help="model name")
    b.add_argument("-n", "--requests", type=int, default=50)
    b.add_argument("-c", "--concurrency", type=int, default=4)
    b.add_argument("--prompt-tokens", type=int, default=32)
    b.add_argument("--max-tokens", type=int, default=32)
    b.add_argument("--url", default=None, help="base URL of a running LlamaMan proxy (default: local)")
    b.add_argument("--api-key", default=None)
    b.add_argument(
        "--target",
        choices=["proxy", "direct"],
        default="proxy",
        help="through the proxy, or straight to the model's llama-server (local runs only)",
    )
    w = sub.add_parser(
        "worker",
        help="lend this machine's devices to llama-servers on other boxes (a llama.cpp RPC worker)",
        description="Run llama.cpp's ggml-rpc-server, keep it running and register it on DATABASE_URL "
        "so launches can spread a model over it. RPC traffic is unauthenticated: bind to a private "
        "network address.",
    )
    w.add_argument("--host", required=True, help="address to listen on, on a private network")
    w.add_argument("--port", type=int, default=rpc_setup.DEFAULT_PORT)
    w.add_argument("--threads", type=int, default=None, help="CPU threads of the CPU device")
    w.add_argument("--cache", action="store_true", help="keep a local cache of tensors sent to it")
    w.add_argument("--bin", default=None, help=f"ggml-rpc-server binary [{rpc_setup.RPC_SERVER_ENV}]")
    w.add_argument("--advertise", default=None, help="address other boxes dial (default: --host)")
    w.add_argument(
        "--allow-any-address",
        action="store_true",
        help="allow --host 0.0.0.0 or :: (only behind a firewall: RPC has no authentication)",
    )
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        env: getattr(args, name)
        for name, (env, _, _) in _FLAGS.items()
        if getattr(args, name, None) is not None
    }
    flags = {name for name, (env, _, _) in _FLAGS.items() if env in overrides}
    try:
        return Settings(**overrides).mark_flags(flags)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
        raise SystemExit("invalid settings:\n" + "\n".join(lines)) from None


def run_bench(args: argparse.Namespace) -> int:
    """``llamaman bench``: 0 when every request succeeded, 1 when some failed, 2 when it could not run."""
    try:
        params = BenchmarkParams(
            model=args.model,
            requests=args.requests,
            concurrency=args.concurrency,
            prompt_tokens=args.prompt_tokens,
            max_tokens=args.max_tokens,
            target=getattr(args, "target", None) or "proxy",
        )
    except ValueError as exc:
        print(f"invalid benchmark settings: {exc}", file=sys.stderr)
        return 2
    if args.url:
        if params.target == "direct":
            print("--target direct needs the local services; leave out --url", file=sys.stderr)
            return 2
        result = asyncio.run(run_benchmark(args.url, params, api_key=args.api_key))
        where = args.url
    else:
        try:
            result, where = asyncio.run(_run_local(args, params))
        except BenchError as exc:
            print(f"llamaman bench: {exc}", file=sys.stderr)
            return 2
    print(format_table(params, result, where))
    return 0 if result["errors"] == 0 else 1


async def _run_local(args: argparse.Namespace, params: BenchmarkParams) -> tuple[dict[str, Any], str]:
    """Start LlamaMan's services in this process, with a proxy on an ephemeral port, and run there.

    The database and logs go to a throwaway folder: a LlamaMan already running on the same DATA_DIR
    keeps its instances (a second supervisor there would adopt and then stop them), and its proxy
    port stays its own.
    """
    with tempfile.TemporaryDirectory(prefix="llamaman-bench-") as tmp:
        args.data_dir, args.logs_dir, args.database_url = tmp, None, None
        args.proxy_port = 0  # the run brings its own proxy on a free port, whatever is configured
        settings = settings_from_args(args)
        services = LlamaMan(settings)
        await services.start()
        try:
            if services.supervisor.binary is None:
                raise BenchError(services.supervisor.binary_error or "no llama-server binary found")
            if services.router.resolve(params.model) is None:
                raise BenchError(f"model '{params.model}' not found in {settings.models_dir}")
            async with services.telemetry.benchmarks.target(params, name="llamaman bench") as (
                url,
                where,
                key,
            ):
                return await run_benchmark(url, params, api_key=key), where
        finally:
            await services.stop()


def worker_options(
    args: argparse.Namespace, settings: Settings
) -> tuple[rpc_worker.WorkerOptions, str | None]:
    """Checked options of ``llamaman worker`` and a warning to print, or ``WorkerSetupError``."""
    warning = rpc_setup.check_bind_address(args.host, args.allow_any_address)
    if args.threads is not None and args.threads < 1:
        raise rpc_setup.WorkerSetupError("--threads must be at least 1")
    address = rpc_setup.registered_address(args.host, args.port, args.advertise)
    binary = rpc_setup.locate_rpc_server(settings, args.bin)
    return rpc_worker.WorkerOptions(
        args.host.strip(), args.port, address, binary, args.threads, args.cache
    ), warning


def run_worker(args: argparse.Namespace) -> int:
    """``llamaman worker``: 0 after a clean stop (SIGTERM, SIGINT), 2 when it could not start."""
    settings = settings_from_args(args)
    try:
        opts, warning = worker_options(args, settings)
    except rpc_setup.WorkerSetupError as exc:
        print(f"llamaman worker: {exc}", file=sys.stderr)
        return 2
    if warning:
        print(warning, file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await rpc_worker.serve(settings, opts, stop)

    return asyncio.run(main())

"""Command line: flags override environment settings."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from typing import Any

from pydantic import ValidationError

from llamaman import __version__
from llamaman.app import LlamaMan
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

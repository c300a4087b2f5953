"""Command line: flags override environment settings."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from llamaman import __version__
from llamaman.core.config import Settings

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
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
        raise SystemExit("invalid settings:\n" + "\n".join(lines)) from None


def run_bench(args: argparse.Namespace) -> int:
    from llamaman.telemetry.loadtest import run_cli

    return run_cli(args)

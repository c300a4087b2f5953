"""A fast stand-in llama-server for load tests of the proxy alone.

It takes llama-server's flags (only ``--host`` and ``--port`` matter), answers ``--version`` and
``--help`` like llama-server so LlamaMan accepts it as LLAMA_SERVER_BIN (through a wrapper script,
see ``wrapper_script``), serves ``/health`` at once, and answers ``/v1/chat/completions`` plain or
as an SSE stream, and ``/v1/embeddings`` with one short vector per input. Token *i* of an answer is
the *i*-th letter of the alphabet (cycling), like the tiny model A, so a client can check every byte
it got. A raw asyncio protocol with httptools keeps
the server's own cost far below the proxy's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import sys
import time
from pathlib import Path

import httptools

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
DEFAULT_TOKENS = 16
# Seconds between two tokens of a stream (0: as fast as the socket takes them).
TOKEN_DELAY = float(os.environ.get("FAKE_TOKEN_DELAY", "0"))
# Like llama-server: the key from LLAMA_API_KEY guards every route but /health, and /props names
# the --alias served (LlamaMan checks both to know the server on its port is the one it started).
API_KEY = os.environ.get("LLAMA_API_KEY", "")
ALIAS = {"value": ""}


def expected(n: int) -> str:
    return (ALPHABET * (n // len(ALPHABET) + 1))[:n]


def _embeddings(given: object) -> dict[str, object]:
    """One vector per input, from its length: enough to check which answer belongs to which input."""
    texts = [given] if isinstance(given, str) else list(given) if isinstance(given, list) else []
    data = [{"object": "embedding", "index": i, "embedding": [float(len(str(t))), 1.0, 0.0]}
            for i, t in enumerate(texts)]  # fmt: skip
    used = sum(len(str(t)) for t in texts)
    return {
        "object": "list",
        "model": "fake",
        "data": data,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }


def _response(status: int, body: bytes, ctype: bytes = b"application/json", keep: bool = True) -> bytes:
    reason = b"OK" if status == 200 else b"Error"
    conn = b"keep-alive" if keep else b"close"
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s" % (
        status, reason, ctype, len(body), conn, body,
    )  # fmt: skip


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(obj: dict[str, object]) -> bytes:
    return _chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


class FakeServer(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.authorization = b""
        self.tasks: set[asyncio.Task[None]] = set()

    # ---- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_response(400, b'{"error":"bad request"}', keep=False))
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for t in self.tasks:
            t.cancel()

    # ---- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []
        self.authorization = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.authorization = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        assert self.transport is not None
        if API_KEY and path != b"/health" and self.authorization != b"Bearer " + API_KEY.encode():
            self.transport.write(_response(401, b'{"error":{"code":401,"message":"Invalid API Key"}}'))
            return
        if method == b"GET":
            if path == b"/props":
                self.transport.write(_response(200, json.dumps({"model_alias": ALIAS["value"]}).encode()))
            elif path == b"/health":
                self.transport.write(_response(200, b'{"status":"ok"}'))
            elif path in (b"/v1/models", b"/models"):
                self.transport.write(_response(200, b'{"object":"list","data":[{"id":"fake"}]}'))
            elif path == b"/slots":
                self.transport.write(_response(200, b"[]"))
            else:
                self.transport.write(_response(200, b"{}"))
            return
        try:
            req = json.loads(b"".join(self.body) or b"{}")
        except ValueError:
            self.transport.write(_response(400, b'{"error":"bad json"}'))
            return
        if path == b"/v1/embeddings":
            self.transport.write(_response(200, json.dumps(_embeddings(req.get("input"))).encode()))
            return
        n = int(req.get("max_tokens") or req.get("n_predict") or DEFAULT_TOKENS)
        if req.get("stream"):
            task = asyncio.ensure_future(self._stream(n))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        text = expected(n)
        body = {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": "fake",
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5},
        }  # fmt: skip
        self.transport.write(_response(200, json.dumps(body).encode()))

    async def _stream(self, n: int) -> None:
        t = self.transport
        assert t is not None
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: keep-alive\r\n\r\n"
        )
        # Each event's keys in llama-server's own order, so a relay's fast paths for its exact shape
        # are measured here as they run in front of a real one.
        tail = {"created": int(time.time()), "id": "chatcmpl-fake", "model": "fake",
                "system_fingerprint": "b0-fake", "object": "chat.completion.chunk"}  # fmt: skip

        def event(delta: dict[str, object], finish: str | None = None, **extra: object) -> bytes:
            choice = {"finish_reason": finish, "index": 0, "delta": delta}
            return _sse({"choices": [choice], **tail, **extra})

        t.write(head + event({"role": "assistant", "content": None}))
        for i in range(n):
            if t.is_closing():
                return
            t.write(event({"content": ALPHABET[i % 26]}))
            # Yield between tokens, as a real server does, so streams interleave.
            await asyncio.sleep(TOKEN_DELAY)
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5}
        t.write(event({}, "length", usage=usage) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeServer, host, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def wrapper_script(folder: Path, token_delay: float | None = None) -> Path:
    """An executable that runs this server with whatever flags it is given (for LLAMA_SERVER_BIN).

    ``token_delay`` (default: this process's ``FAKE_TOKEN_DELAY``) is written into it: LlamaMan
    starts its servers with an allow-listed environment, which a delay set for LlamaMan never
    reaches."""
    if token_delay is None:
        token_delay = float(os.environ.get("FAKE_TOKEN_DELAY", "0"))
    path = folder / "fake-llama-server"
    path.write_text(
        f'#!/bin/sh\nFAKE_TOKEN_DELAY={float(token_delay)!r} exec "{sys.executable}" '
        f'"{Path(__file__).resolve()}" "$@"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def main() -> None:
    if "--version" in sys.argv:
        print("version: 1 (fake-upstream)\nbuilt for benchmarks", flush=True)
        return
    if "--help" in sys.argv:
        print("usage: fake-upstream -m FNAME --port PORT", flush=True)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--alias", default="")
    args, _unknown = ap.parse_known_args()
    ALIAS["value"] = args.alias
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

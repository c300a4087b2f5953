"""A stand-in llama-server for faults a real one won't produce on demand.

Modes (FAKE_LLAMA_MODE): ``exit-during-load`` (prints a line and exits 3), ``ignore-sigterm``
(healthy, but survives SIGTERM), ``never-healthy`` (503 forever), ``crash-mid-stream`` (healthy;
dies halfway through a streamed chat), ``slow-load`` (503 for FAKE_LLAMA_DELAY seconds).
It accepts and ignores the usual llama-server flags; only --port and --host matter.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = os.environ.get("FAKE_LLAMA_MODE", "ok")
DELAY = float(os.environ.get("FAKE_LLAMA_DELAY", "1.0"))
STARTED = time.monotonic()
# Like llama-server: with LLAMA_API_KEY set, everything but /health needs it.
API_KEY = os.environ.get("LLAMA_API_KEY")
ALIAS: list[str] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        print("request:", fmt % args, flush=True)

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if API_KEY and self.headers.get("Authorization") != f"Bearer {API_KEY}":
            self._json(401, {"error": {"message": "Invalid API Key", "code": 401}})
            return False
        return True

    def do_GET(self) -> None:
        if self.path.startswith("/health"):
            loading = MODE == "never-healthy" or (MODE == "slow-load" and time.monotonic() - STARTED < DELAY)
            if loading:
                self._json(503, {"error": {"message": "Loading model", "code": 503}})
            else:
                self._json(200, {"status": "ok"})
            return
        if not self._authorized():
            return
        if self.path.startswith("/props"):
            self._json(200, {"model_alias": ALIAS[0] if ALIAS else None})
            return
        self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self._authorized():
            return
        if MODE == "crash-mid-stream" and body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                chunk = {"choices": [{"index": 0, "delta": {"content": "abc"[i]}, "finish_reason": None}]}
                payload = f"data: {json.dumps(chunk)}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
                self.wfile.flush()
                time.sleep(0.05)
            print("crashing mid-stream", flush=True)
            os._exit(9)
        self._json(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]})


def main() -> None:
    # Answer the probes LlamaMan runs on a binary, as llama-server does.
    if "--version" in sys.argv:
        print("version: 1 (fake)\nbuilt with nothing for testing", flush=True)
        return
    if "--help" in sys.argv:
        print("usage: fake-llama-server -m FNAME --port PORT", flush=True)
        return
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--alias", default=None)
    args, _unknown = p.parse_known_args()
    if args.alias:
        ALIAS.append(args.alias)
    print(f"fake llama-server mode={MODE} pid={os.getpid()}", flush=True)
    if MODE == "exit-during-load":
        print("error: failed to load model", flush=True)
        sys.exit(3)
    if MODE == "ignore-sigterm":
        signal.signal(signal.SIGTERM, lambda *_: print("ignoring SIGTERM", flush=True))
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

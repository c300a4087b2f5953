"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psutil
from sqlalchemy import MetaData, create_engine
from sqlalchemy.engine import make_url

from llamaman.instances.ownership import ENV_INSTANCE_ID, ENV_OWNER
from llamaman.testing.mariadb import MariaDBServer


def servers_of(owner: str) -> list[psutil.Process]:
    """Live llama-server processes started by the LlamaMan whose data dir is ``owner``."""
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            env = p.environ()
            if env.get(ENV_OWNER) == owner and ENV_INSTANCE_ID in env and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


async def chat(
    port: int, text: str = "hi", max_tokens: int = 8, *, headers: dict[str, str] | None = None
) -> str:
    """One chat completion straight from the llama-server (or listener) on ``port``."""
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens},
            headers=headers,
            timeout=30,
        )
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]


def auth_of(client: httpx.AsyncClient) -> dict[str, str]:
    """The credentials a test client sends, for requests made outside it (e.g. to instance ports)."""
    auth = client.headers.get("Authorization")
    return {"Authorization": auth} if auth else {}


class _BodyStream(httpx.AsyncByteStream):
    def __init__(
        self, chunks: asyncio.Queue[bytes | None], disconnect: asyncio.Event, app: asyncio.Task[None]
    ) -> None:
        self._chunks = chunks
        self._disconnect = disconnect
        self._app = app

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunks.get()) is not None:
            yield chunk

    async def aclose(self) -> None:
        # The client hung up: tell the app, give it a moment to notice, then stop it regardless.
        self._disconnect.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._app), 5)
        except TimeoutError:
            self._app.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._app


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Like ``httpx.ASGITransport``, but the response is handed over once its headers are sent.

    httpx's own transport waits for the whole body, which never ends for server-sent events.
    Closing the response here sends the app an ``http.disconnect``, as a real client would.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": ("127.0.0.1", 123),
            "root_path": "",
        }
        loop = asyncio.get_running_loop()
        head: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = loop.create_future()
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        disconnect = asyncio.Event()
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and not head.done():
                head.set_result((message["status"], list(message.get("headers", []))))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    chunks.put_nowait(message["body"])
                if not message.get("more_body", False):
                    chunks.put_nowait(None)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:
                if not head.done():
                    head.set_exception(exc)
                raise
            finally:
                chunks.put_nowait(None)
                if not head.done():
                    head.set_exception(RuntimeError("the app returned without a response"))

        task = asyncio.create_task(run())
        status, headers = await head
        return httpx.Response(status, headers=headers, stream=_BodyStream(chunks, disconnect, task))


@contextlib.asynccontextmanager
async def api_client(services: Any, *, streaming: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the REST API of already started ``services``."""
    from llamaman.app import create_app

    app = create_app(services, manage_lifecycle=False)
    transport: httpx.AsyncBaseTransport = (
        StreamingASGITransport(app) if streaming else httpx.ASGITransport(app)
    )
    headers = await admin_headers(services)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://llamaman.test", headers=headers
    ) as client:
        yield client


async def admin_headers(services: Any) -> dict[str, str]:
    """Credentials for a test client: the REST API always needs an admin key or a session."""
    _, key = await services.auth.keys.create("tests", scope="admin")
    return {"Authorization": f"Bearer {key}"}


async def inference_headers(services: Any) -> dict[str, str]:
    """Credentials of a model client (Open WebUI, an SDK): an inference key, the default scope."""
    _, key = await services.auth.keys.create("client")
    return {"Authorization": f"Bearer {key}"}


def asgi(services: Any, surface: str = "proxy") -> httpx.AsyncClient:
    """A client for the proxy app (or the main app) over ASGI, without a listening socket."""
    from llamaman.app import create_app
    from llamaman.proxy.app import create_proxy_app

    app = create_proxy_app(services) if surface == "proxy" else create_app(services, manage_lifecycle=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://llamaman.test")


# ---- MariaDB --------------------------------------------------------------------------------


def _drop_all_tables(url: str) -> None:
    engine = create_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        meta.drop_all(engine)
    finally:
        engine.dispose()


@contextlib.contextmanager
def fresh_mysql_database(server: MariaDBServer) -> Iterator[str]:
    """A URL of an empty database on ``server``, owned by the server's test user."""
    if not server.owned:
        # A borrowed server gives one database and no right to create more: empty that one.
        _drop_all_tables(server.url)
        yield server.url
        return
    url = make_url(server.url)
    name = f"llamaman_{secrets.token_hex(4)}"
    conn = server.root_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            cur.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO %s@'%%'", (url.username,))
    finally:
        conn.close()
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        conn = server.root_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE `{name}`")
        finally:
            conn.close()

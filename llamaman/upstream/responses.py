"""The answers the relay hands back to the ASGI server: streams that give their lease back however
they end, and buffered answers with ready-made headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from llamaman.upstream.target import UpstreamTarget
from llamaman.upstream.wire import UpstreamResponse

# Where the proxy's front door leaves the server's own ``send`` in the scope, before the middleware
# layers that wrap it.
RAW_SEND = "llamaman.raw_send"

# Given a block, writes it to the client and answers whether the client may take more.
Sink = Callable[[bytes], bool]
# A stream passed to a sink; the second argument waits until the client may take more.
Splice = Callable[[Sink, Callable[[], Awaitable[object]]], Awaitable[None]]


class RelayStream(StreamingResponse):
    """A streamed answer that gives its lease back and closes upstream however it ends (when the
    client is gone before the first byte, the body generator never starts, so its own ``finally``
    never runs).

    A client that disconnects aborts the upstream request, which ends the body iterator at once;
    that costs one watcher task per stream instead of Starlette's task group with cancel scopes.

    ``splice``, where given: the same stream passed to a callback from the upstream connection's own
    (``stream_relay.splice_stream``), for a server that writes to its client's transport itself; it
    is used instead of ``body_iterator``, never beside it.
    """

    splice: Splice | None

    def __init__(
        self,
        body: AsyncIterator[bytes],
        lease: UpstreamTarget,
        upstream: UpstreamResponse,
        *,
        status_code: int = 200,
        raw_headers: list[tuple[bytes, bytes]],
        splice: Splice | None = None,
    ) -> None:
        self.body_iterator = body
        self.splice = splice
        self.status_code = status_code
        self.background = None
        self.raw_headers = raw_headers
        self._lease = lease
        self._upstream = upstream

    async def _watch(self, receive: Receive) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                self.abort()
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher: asyncio.Task[None] | None = None
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            watcher = asyncio.get_running_loop().create_task(self._watch(receive))
            # Once a successful answer has started, the layers between here and the server only
            # pass its body on: each chunk may skip them (an error's body still goes through them,
            # the refusal recorder reads it).
            body_send = scope.get(RAW_SEND, send) if self.status_code < 400 else send
            async for chunk in self.body_iterator:
                await body_send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()
            await self.close()

    def abort(self) -> None:
        """The client left: stop reading upstream (llama-server then frees the slot)."""
        self._upstream.abort()

    async def close(self) -> None:
        """End the relay however far it got: the body's own cleanup, the lease, the upstream request."""
        closer = getattr(self.body_iterator, "aclose", None)
        if closer is not None:
            await closer()
        self._lease.release()
        self._upstream.close()


class RawResponse(Response):
    """A buffered answer with headers already in ASGI form (Response's own header building skipped)."""

    # Set by ``Relay.forward(settle_later=True)``: to be called once the answer is sent.
    settle: Callable[[], None] | None = None

    def __init__(self, body: bytes, status_code: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.body = body
        self.status_code = status_code
        self.background = None
        raw_headers.append((b"content-length", b"%d" % len(body)))
        self.raw_headers = raw_headers

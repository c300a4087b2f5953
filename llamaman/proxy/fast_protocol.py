"""The HTTP protocol of the proxy port and the main port: the guarded httptools protocol, with the fast
lane (``fast_lane``) taking the requests it may straight from the parser.

A request goes the lane's way only when nothing else is being answered on its connection. While the
lane answers, a stand-in occupies uvicorn's cycle slot: a request pipelined behind it is queued by
uvicorn as behind any other answer, a server shutdown asks it to close once done, and a lost
connection marks it like any other. A request the lane turns down after reading its headers (its
body, or a model it cannot serve or wait for) is handed to uvicorn then, as if the headers had just
arrived, with the body read so far.

Where a kept connection to llama-server is free, the request is written to it from the parser's
callback, and a whole answer is written back to the client from llama-server's parser callback as
soon as it is in; the serving task that wakes after it settles the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import partial
from typing import Any

from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from llamaman.core.exchange import Exchange
from llamaman.core.identity import CURRENT_IDENTITY
from llamaman.gateway.http_protocol import QuietProtocol
from llamaman.proxy.common import ProxyError
from llamaman.proxy.fast_lane import Admitted, FastLane, Ready, Sent
from llamaman.scheduling.lease import Lease
from llamaman.upstream.answers import error_payload
from llamaman.upstream.client import Pending
from llamaman.upstream.inflight import CLIENT_LEFT, CUT_OFF
from llamaman.upstream.relay import answered_whole
from llamaman.upstream.responses import RelayStream
from llamaman.upstream.wire import UpstreamResponse

log = logging.getLogger(__name__)

LANE_FAILED = "the fast lane failed; the full path answered instead"

_ERROR_500 = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


_CUT_OFF_BODY = json.dumps(error_payload("openai", CUT_OFF, 503)).encode()
_CUT_OFF_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(_CUT_OFF_BODY), _CUT_OFF_BODY)
)


class _NoWaiter:
    """The cycle's body event: nobody waits on the lane's."""

    def set(self) -> None:
        pass


_NO_WAITER = _NoWaiter()


class _LaneCycle:
    """What uvicorn reads of its request cycle, for the request the lane is answering."""

    __slots__ = (
        "answered",
        "body",
        "disconnected",
        "keep_alive",
        "message_event",
        "more_body",
        "response_complete",
    )

    def __init__(self) -> None:
        self.response_complete = False
        self.answered = False  # written from llama-server's parser callback, before the task ran
        self.keep_alive = True  # uvicorn's shutdown sets it False: close once answered
        self.disconnected = False
        self.more_body = False
        self.body = b""
        self.message_event = _NO_WAITER


class FastLaneProtocol(QuietProtocol):
    lane: FastLane  # set per server by ``lane_protocol``
    # The main port's (``lane_protocol``): the app a model request (a POST to one of
    # ``model_targets``) without a cookie goes to when it goes the full way, instead of the
    # server's own (the UI's).
    models_app: Any = None
    model_targets: frozenset[bytes] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._server_app = self.app
        self._admitted: Admitted | None = None
        self._last: Admitted | None = None  # the last request on the connection the lane admitted
        self._parts: list[bytes] = []
        self._received = 0
        self._before: Any = None  # uvicorn's cycle before the lane's stand-in took its place
        self._exchange: Exchange | None = None
        self._stream: RelayStream | None = None

    # ---- the parser's callbacks ------------------------------------------------------------------
    def start_request(self) -> None:
        cycle = self.cycle
        admitted = None
        if (cycle is None or cycle.response_complete) and not self.pipeline:
            parser = self.parser
            if parser.get_http_version() == "1.1" and not parser.should_upgrade():
                try:
                    admitted = self.lane.admit(parser.get_method(), self.url, self.headers, self._last)
                except Exception:  # the lane's own fault: the full path takes the request
                    log.exception("the fast lane failed on a request's headers; the full path takes it")
        self._last = admitted
        if admitted is None:
            self._choose_app()
            super().start_request()
            return
        self._admitted = admitted
        self._parts = []
        self._received = 0
        self._before = cycle
        lane_cycle = _LaneCycle()
        # "Connection: close": answered like any other, then closed (as uvicorn's cycle does).
        lane_cycle.keep_alive = self.parser.should_keep_alive()
        self.cycle = lane_cycle  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        if self._admitted is None:
            super().on_body(body)
            return
        self._parts.append(body)
        self._received += len(body)
        if self._received > self._admitted.length:  # pragma: no cover - the parser frames by length
            self._hand_over(complete=False)

    def on_message_complete(self) -> None:
        admitted = self._admitted
        if admitted is None:
            super().on_message_complete()
            return
        raw = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        ready: Ready | None = None
        lease: Lease | None = None
        ex: Exchange | None = None
        sent: Sent | None = None
        written: list[Pending] = []  # the request as written to llama-server, once it is
        take = False
        try:
            ready = self.lane.ready(admitted, raw)
            if ready is not None:
                lease = self.lane.lease(ready)
                take = lease is not None or self.lane.may_wait(ready)
                if lease is not None:
                    # First: the rest overlaps llama-server's work.
                    sent = self.lane.send_now(ready, lease, written.append)
                    ex = self.lane.exchange(ready, lease)
                    if written:
                        ex.on_abort(written[0].abort)
                        written[0].response.on_whole = partial(self._answer_whole, self.cycle)  # type: ignore[arg-type]
        except Exception:
            # A fault of the lane's own, raised out of the parser's callback, would drop the
            # connection with nothing said: the full path takes the request instead (and answers it,
            # or says it failed), and what the lane took is given back.
            log.exception("the fast lane failed on a request to %s; the full path takes it", admitted.path)
            for pending in written:
                pending.abort()  # a request already written to llama-server is dropped there
            if ex is not None:
                ex.abort(LANE_FAILED)
            if lease is not None:
                lease.release()
            take = False
        if not take or ready is None:
            self._hand_over(complete=True)
            return
        self._admitted = None
        self._parts = []
        self._exchange = ex
        task = self.loop.create_task(self._serve(ready, lease, self.cycle, ex, sent))  # type: ignore[arg-type]
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _hand_over(self, *, complete: bool) -> None:
        """Give the request to uvicorn, as if its headers had just arrived (the parser is still on it)."""
        parts = self._parts
        self._admitted = None
        self._parts = []
        self.cycle = self._before
        self._choose_app()
        HttpToolsProtocol.on_headers_complete(self)
        if parts:
            HttpToolsProtocol.on_body(self, b"".join(parts))
        if complete:
            HttpToolsProtocol.on_message_complete(self)

    def _choose_app(self) -> None:
        """The app for the request about to go the full way (uvicorn reads ``self.app`` as it makes
        the request's cycle): the models app for a model request without a cookie, if any."""
        if self.models_app is None:
            return
        models = (
            self.parser.get_method() == b"POST"
            and self.url.split(b"?", 1)[0] in self.model_targets
            and not self.parser.should_upgrade()
            and all(name != b"cookie" for name, _ in self.headers)
        )
        self.app = self.models_app if models else self._server_app

    def _answer_whole(self, cycle: _LaneCycle, upstream: UpstreamResponse) -> None:
        """llama-server's whole answer, written to the client from its parser's callback: the serving
        task, which wakes after it, then only settles it (the lease, the connection, the accounting).
        Anything ``answered_whole`` leaves (a stream, a server error) is the task's to answer."""
        ex = self._exchange
        if self.cycle is not cycle or cycle.disconnected or ex is None or ex.cancelled is not None:
            return
        try:
            response = answered_whole(upstream)
        except Exception:  # the task meets it again, and answers
            log.exception("the fast lane failed on an answer from llama-server; its task answers it")
            return
        if response is None or self.transport.is_closing():
            return
        self._write(response, cycle)
        cycle.answered = True
        self._exchange = None  # answered: a client leaving now cuts nothing off

    # ---- the connection --------------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._stream is not None:
            self._stream.abort()  # as the ASGI path does when a stream's client leaves
        elif self._exchange is not None:
            self._exchange.abort(CLIENT_LEFT)

    # ---- answering -------------------------------------------------------------------------------
    async def _serve(
        self, ready: Ready, lease: Lease | None, cycle: _LaneCycle, ex: Exchange | None, sent: Sent | None
    ) -> None:
        CURRENT_IDENTITY.set(ready.admitted.identity)  # this task's own context: what observers read
        started = False
        try:
            if lease is None:
                asked = time.monotonic()
                try:
                    lease = await self.lane.wait(ready)
                except ProxyError as exc:
                    started = True
                    self._write(self.lane.refusal(ready, exc, asked), cycle)
                    return
            if ex is None:
                ex = self._exchange = self.lane.exchange(ready, lease)
            if cycle.disconnected or self.transport.is_closing():
                ex.abort(CLIENT_LEFT)  # it left while queued: ended at once, and recorded so
            response = await self.lane.answer(ready, lease, ex, sent)
            started = True
            if isinstance(response, RelayStream):
                await self._relay(response, cycle)
            else:
                try:
                    self._write(response, cycle)
                finally:
                    # The lease, the connection and the accounting: after the answer, not before it.
                    settle = getattr(response, "settle", None)
                    if settle is not None:
                        settle()
        except asyncio.CancelledError:
            # Only a server stopping cancels the lane's answers, once its grace is over: the client
            # is told so, as the full path tells it, rather than dropped with nothing said.
            if not started and not cycle.answered and not self.transport.is_closing():
                self.transport.write(_CUT_OFF_503)
            cycle.keep_alive = False
            raise
        except Exception:
            log.exception("the proxy's answer to %s failed", ready.admitted.path)
            if not started and not cycle.answered and not self.transport.is_closing():
                self.transport.write(_ERROR_500)
            cycle.keep_alive = False
        finally:
            self._exchange = None
            self._stream = None
            cycle.response_complete = True
            if self.transport.is_closing():
                pass
            elif cycle.keep_alive:
                self.on_response_complete()  # uvicorn's: the next request, or the keep-alive timer
            else:
                self.transport.close()

    def _head(self, response: Response, cycle: _LaneCycle, extra: bytes = b"") -> list[bytes]:
        out = [STATUS_LINE[response.status_code]]
        for name, value in (*self.server_state.default_headers, *response.raw_headers):
            out += (name, b": ", value, b"\r\n")
        out.append(extra)
        if not cycle.keep_alive:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        return out

    def _write(self, response: Response, cycle: _LaneCycle) -> None:
        if cycle.answered or self.transport.is_closing():
            return
        out = self._head(response, cycle)
        out.append(response.body)
        self.write_whole(b"".join(out))

    async def _relay(self, response: RelayStream, cycle: _LaneCycle) -> None:
        """A stream, each block written from llama-server's connection callback (no task step per
        block). Every stream the lane's relay answers can be spliced; one that cannot is a fault."""
        self._stream = response
        try:
            if response.splice is None:
                raise RuntimeError("the fast lane was given a stream it cannot splice")
            if self.transport.is_closing():
                response.abort()
                return
            self.transport.write(b"".join(self._head(response, cycle, b"transfer-encoding: chunked\r\n")))
            await response.splice(partial(self._pass_on, cycle), self.flow.drain)
            if not cycle.disconnected and not self.transport.is_closing():
                self.transport.write(b"0\r\n\r\n")
        finally:
            await response.close()

    def _pass_on(self, cycle: _LaneCycle, chunk: bytes) -> bool:
        """One block of a spliced stream, written as a chunk; whether the client may take more."""
        if cycle.disconnected or self.transport.is_closing():
            return True  # the stream is being aborted: nothing more to write, nothing to wait for
        if chunk:
            self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        return not self.flow.write_paused


def lane_protocol(
    lane: FastLane, models_app: Any = None, model_targets: frozenset[bytes] = frozenset()
) -> type[FastLaneProtocol]:
    """The protocol class for one server, bound to its lane; ``models_app`` and ``model_targets``:
    the main port's (see ``FastLaneProtocol.models_app``)."""
    # staticmethod: a function kept on the class would be bound to each protocol instance.
    bound = {"lane": lane, "models_app": staticmethod(models_app), "model_targets": model_targets}
    return type("BoundFastLaneProtocol", (FastLaneProtocol,), bound)

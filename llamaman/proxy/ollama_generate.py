"""What ``/api/generate`` does beyond a chat: raw prompts and Ollama's ``context`` token ids.

A model without a chat template is a base model: Ollama sends its prompt as is (its template is
``{{ .Prompt }}``), so it goes to llama-server's native ``/completion``, never through the ChatML
fallback llama-server would otherwise apply. ``context`` is what Ollama returns for a templated
(non-raw) generate: the token ids of the prompt as the model saw it plus the reply; a later request
may send it back to continue from there.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from llamaman.library.catalog import ModelEntry
from llamaman.proxy.common import ProxyError
from llamaman.proxy.translate import TranslateError, ollama_generate_to_openai
from llamaman.scheduling.router import Lease
from llamaman.services import Services

_JSON = {"Content-Type": "application/json"}
_CHAT_PATH = "/v1/chat/completions"


def is_templated(entry: ModelEntry) -> bool:
    return entry.info is not None and entry.info.has_chat_template


def wants_context(body: Mapping[str, Any]) -> bool:
    # Ollama leaves ``context`` out of raw replies: there is no template whose turns it could hold.
    return not body.get("raw") and not body.get("suffix")


def sent_context(body: Mapping[str, Any]) -> list[int]:
    context = body.get("context")
    if context is None:
        return []
    if not isinstance(context, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in context
    ):
        raise TranslateError("context must be a list of token ids (non-negative integers)")
    return context


_MAX_TOP_LOGPROBS = 20  # Ollama's bound


def requested_logprobs(body: Mapping[str, Any]) -> int | None:
    """How many alternatives per token ``logprobs`` asks for (0: only the chosen token's), or None."""
    if body.get("logprobs") in (None, False):
        return None
    if body.get("logprobs") is not True:
        raise TranslateError("logprobs must be true or false")
    top = body.get("top_logprobs") or 0
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= _MAX_TOP_LOGPROBS:
        raise TranslateError(f"top_logprobs must be a whole number from 0 to {_MAX_TOP_LOGPROBS}")
    return top


def check(body: Mapping[str, Any]) -> None:
    """Refuse a malformed ``context`` or ``logprobs`` before a model is loaded for the request."""
    sent_context(body)
    requested_logprobs(body)


def _ask_logprobs(body: Mapping[str, Any], path: str, payload: dict[str, Any]) -> None:
    top = requested_logprobs(body)
    if top is None or body.get("stream", True) is not False:
        return  # streamed replies carry no logprobs here
    if path == _CHAT_PATH:
        payload.update(logprobs=True, top_logprobs=top)
    else:
        # Each entry carries the chosen token's own logprob; at least one alternative is needed
        # for llama-server to report any.
        payload["n_probs"] = max(1, top)


def _logprob(entry: Mapping[str, Any]) -> dict[str, Any]:
    out = {"token": str(entry.get("token", "")), "logprob": float(entry.get("logprob") or 0.0)}
    if isinstance(entry.get("bytes"), list):
        out["bytes"] = entry["bytes"]
    return out


def reply_logprobs(body: Mapping[str, Any], reply: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Ollama's ``logprobs`` from a native or chat reply, when the request asked for them."""
    top = requested_logprobs(body)
    if top is None:
        return None
    entries = reply.get("completion_probabilities")
    if not isinstance(entries, list):
        choices = reply.get("choices") or [{}]
        logprobs = choices[0].get("logprobs") if isinstance(choices[0], Mapping) else None
        entries = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        item = _logprob(entry)
        alternatives = [_logprob(a) for a in entry.get("top_logprobs") or [] if isinstance(a, Mapping)]
        if top and alternatives:
            item["top_logprobs"] = alternatives[:top]
        out.append(item)
    return out


async def _call(services: Services, lease: Lease, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One small JSON request to the leased llama-server (tokenize, detokenize, apply-template)."""
    try:
        upstream = await services.relay.open(
            lease, "POST", path, content=json.dumps(payload).encode(), headers=_JSON
        )
        try:
            raw = await upstream.aread()
        finally:
            await upstream.aclose()
    except httpx.HTTPError as exc:
        raise ProxyError(502, f"llama-server for '{lease.model_name}' is unreachable: {exc}") from None
    try:
        reply = json.loads(raw) if upstream.status_code < 400 else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ProxyError(
            502, f"llama-server for '{lease.model_name}' refused {path} ({upstream.status_code})"
        )
    return reply


async def _templated_prompt(services: Services, lease: Lease, payload: Mapping[str, Any]) -> str:
    reply = await _call(services, lease, "/apply-template", {"messages": payload.get("messages") or []})
    return str(reply.get("prompt") or "")


async def prepare(
    services: Services, lease: Lease, body: dict[str, Any], path: str, payload: dict[str, Any]
) -> tuple[str, dict[str, Any], str]:
    """The upstream path and body once a sent ``context`` is laid in front of the prompt, and the
    prompt text the model will see (for the reply's ``context``)."""
    context = sent_context(body)
    path, payload, prompt = await _with_context(services, lease, body, path, payload, context)
    _ask_logprobs(body, path, payload)
    return path, payload, prompt


async def _with_context(
    services: Services,
    lease: Lease,
    body: dict[str, Any],
    path: str,
    payload: dict[str, Any],
    context: list[int],
) -> tuple[str, dict[str, Any], str]:
    if path == _CHAT_PATH:
        if not context and not wants_context(body):
            return path, payload, ""
        prompt = await _templated_prompt(services, lease, payload)
        if not context:
            return path, payload, prompt
        # The earlier turns are text only llama-server's tokenizer can restore; with them in front
        # the templated prompt is sent as a raw completion, as Ollama does.
        prefix = await detokenize(services, lease, context)
        raw_path, raw_payload = ollama_generate_to_openai({**body, "raw": True, "prompt": prefix + prompt})
        return raw_path, raw_payload, prefix + prompt
    if path == "/completion":
        if context:
            payload["prompt"] = await detokenize(services, lease, context) + str(payload.get("prompt") or "")
        return path, payload, str(payload.get("prompt") or "")
    return path, payload, ""


async def detokenize(services: Services, lease: Lease, tokens: list[int]) -> str:
    reply = await _call(services, lease, "/detokenize", {"tokens": tokens})
    return str(reply.get("content") or "")


async def tokenize(services: Services, lease: Lease, text: str) -> list[int]:
    reply = await _call(services, lease, "/tokenize", {"content": text, "add_special": False})
    tokens = reply.get("tokens") or []
    return [t for t in tokens if isinstance(t, int)]


def _reply_text(reply: Mapping[str, Any]) -> str:
    """The generated text of a non-streamed native or chat reply."""
    if isinstance(reply.get("content"), str):
        return str(reply["content"])
    choices = reply.get("choices") or [{}]
    message = choices[0].get("message") or {} if isinstance(choices[0], Mapping) else {}
    return str(message.get("content") or "")


async def reply_context(
    services: Services, lease: Lease, body: Mapping[str, Any], reply: Mapping[str, Any], prompt: str
) -> list[int] | None:
    """The ``context`` of a non-streamed generate (the lease must still be held); None where
    Ollama gives none (raw replies, errors)."""
    if not wants_context(body) or "error" in reply:
        return None
    return await tokenize(services, lease, prompt + _reply_text(reply))


def settle_context(obj: dict[str, Any], context: list[int] | None) -> None:
    # Ollama leaves the key out entirely where it has no context to give.
    if context is None or "error" in obj:
        obj.pop("context", None)
    else:
        obj["context"] = context


def finish(
    obj: dict[str, Any], context: list[int] | None, body: Mapping[str, Any], reply: Mapping[str, Any]
) -> None:
    """The final non-streamed generate object as Ollama gives it: ``context`` and ``logprobs``."""
    settle_context(obj, context)
    logprobs = reply_logprobs(body, reply) if "error" not in obj else None
    if logprobs is not None:
        obj["logprobs"] = logprobs


async def with_context(
    services: Services, lease: Lease, lines: AsyncIterator[bytes], body: Mapping[str, Any], prompt: str
) -> AsyncIterator[bytes]:
    """A streamed generate whose last object carries ``context``. The inner stream still holds the
    lease while it waits for its final line to be taken, so the tokenizer can be asked then."""
    response: list[str] = []
    wanted = wants_context(body)
    try:
        async for block in lines:
            out: list[bytes] = []
            # A block carries one or more whole NDJSON lines (the relay writes each upstream block once).
            for line in block.splitlines(keepends=True):
                if not line.strip():
                    continue
                obj = json.loads(line)
                if isinstance(obj.get("response"), str):
                    response.append(obj["response"])
                if obj.get("done") is True:
                    context = None
                    if wanted and "error" not in obj:
                        try:
                            context = await tokenize(services, lease, prompt + "".join(response))
                        except ProxyError:
                            pass  # the reply is whole; only its optional token ids are missing
                    settle_context(obj, context)
                    line = json.dumps(obj, ensure_ascii=False).encode() + b"\n"
                out.append(line)
            yield b"".join(out)
    finally:
        aclose = getattr(lines, "aclose", None)
        if aclose is not None:
            await aclose()

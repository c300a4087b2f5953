"""Translate Ollama API requests onto llama-server endpoints and llama-server replies back.

Pure functions, no I/O. Requests go to llama-server's OpenAI-compatible ``/v1/chat/completions`` and
``/v1/embeddings`` except raw and fill-in-the-middle generation, which need the native ``/completion``
and ``/infill`` endpoints. The reply side lives in :mod:`llamaman.proxy.translate_stream` and is
re-exported here so callers need one import.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from llamaman.proxy.translate_stream import (
    OllamaChatStream,
    format_rfc3339,
    format_rfc3339_ns,
    native_completion_to_ollama,
    openai_chat_response_to_ollama,
    openai_embeddings_to_ollama_embed,
    openai_embeddings_to_ollama_embeddings,
)

__all__ = [
    "LOAD_TIME_OPTIONS",
    "OllamaChatStream",
    "TranslateError",
    "digest_for",
    "format_rfc3339",
    "format_rfc3339_ns",
    "is_load_only",
    "load_options",
    "native_completion_to_ollama",
    "ollama_chat_to_openai",
    "ollama_embed_to_openai",
    "ollama_embeddings_to_openai",
    "ollama_error",
    "ollama_generate_to_openai",
    "ollama_model_name",
    "openai_chat_response_to_ollama",
    "openai_embeddings_to_ollama_embed",
    "openai_embeddings_to_ollama_embeddings",
    "openai_error",
    "parse_keep_alive",
    "parse_options",
    "strip_latest",
]


class TranslateError(ValueError):
    """The client's request cannot be mapped; the message is safe to return as a 400."""


# -- options --------------------------------------------------------------------------------------

# Ollama option -> (OpenAI-endpoint name, native-endpoint name, kind). llama-server reads its native
# sampler names on the OpenAI endpoint too, so only the token limit differs.
_SAMPLING: dict[str, tuple[str, str, type]] = {
    "temperature": ("temperature", "temperature", float),
    "top_p": ("top_p", "top_p", float),
    "top_k": ("top_k", "top_k", int),
    "min_p": ("min_p", "min_p", float),
    "typical_p": ("typical_p", "typical_p", float),
    "seed": ("seed", "seed", int),
    "num_predict": ("max_tokens", "n_predict", int),
    "repeat_penalty": ("repeat_penalty", "repeat_penalty", float),
    "repeat_last_n": ("repeat_last_n", "repeat_last_n", int),
    "presence_penalty": ("presence_penalty", "presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", "frequency_penalty", float),
    "mirostat": ("mirostat", "mirostat", int),
    "mirostat_tau": ("mirostat_tau", "mirostat_tau", float),
    "mirostat_eta": ("mirostat_eta", "mirostat_eta", float),
    "num_keep": ("n_keep", "n_keep", int),
}

# Fixed when llama-server starts, so a request cannot change them; the router may read them
# (num_ctx especially) when it decides how to launch a model.
LOAD_TIME_OPTIONS = frozenset(
    {
        "num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all",
        "vocab_only", "use_mmap", "use_mlock", "num_thread", "numa", "embedding_only",
    }
)  # fmt: skip


def _number(key: str, value: Any, kind: type) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TranslateError(f"option {key!r} must be a number, got {value!r}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise TranslateError(f"option {key!r} must be an integer, got {value!r}")
        if not -(2**63) <= value < 2**63:
            raise TranslateError(f"option {key!r} is out of range, got {value!r}")
        return int(value)
    return float(value)


def _stop_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise TranslateError(f"option 'stop' must be a string or a list of strings, got {value!r}")


def parse_options(options: Any, *, native: bool = False) -> dict[str, Any]:
    """Ollama ``options`` as llama-server sampling fields (native names when ``native``).

    Load-time options and samplers llama.cpp no longer has (tfs_z, penalize_newline) are dropped,
    as Ollama itself does with options a model cannot use.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TranslateError("options must be an object")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key == "stop":
            stops = _stop_list(value)
            if stops:
                out["stop"] = stops
            continue
        mapping = _SAMPLING.get(key)
        if mapping is None:
            continue
        number = _number(key, value, mapping[2])
        # Ollama's -1 (no limit) and -2 (fill the context) both mean "no cap" to llama-server.
        if key == "num_predict" and number < 0:
            continue
        out[mapping[1] if native else mapping[0]] = number
    return out


def load_options(options: Any) -> dict[str, Any]:
    """The load-time subset of Ollama ``options`` that :func:`parse_options` leaves out."""
    if not isinstance(options, Mapping):
        return {}
    return {key: value for key, value in options.items() if key in LOAD_TIME_OPTIONS and value is not None}


# -- keep_alive -----------------------------------------------------------------------------------

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)"
_DURATION = re.compile(rf"([+-]?)((?:{_PART})+)")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to keep a model loaded: ``None`` when unset, ``0`` to unload now, ``inf`` for forever.

    Accepts what Ollama accepts: a number of seconds, or a duration string such as "5m", "1h30m",
    "10s", "300ms"; any negative value means forever. Bare numeric strings count as seconds.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TranslateError(f"invalid keep_alive {value!r}: expected seconds or a duration like '5m'")
    if isinstance(value, int | float):
        if math.isnan(value):
            raise TranslateError("invalid keep_alive: NaN")
        return math.inf if value < 0 else float(value)
    if not isinstance(value, str):
        raise TranslateError(f"invalid keep_alive {value!r}: expected seconds or a duration like '5m'")
    text = value.strip()
    if not text:
        return None
    if _NUMBER.fullmatch(text):
        seconds = float(text)
    else:
        match = _DURATION.fullmatch(text)
        if match is None:
            raise TranslateError(
                f"invalid keep_alive {value!r}: use seconds or a duration like '5m', '1h30m', '300ms'"
            )
        magnitude = sum(float(num) * _UNIT_SECONDS[unit] for num, unit in re.findall(_PART, match[2]))
        seconds = -magnitude if match[1] == "-" else magnitude
    return math.inf if seconds < 0 else seconds


# -- requests -------------------------------------------------------------------------------------

_IMAGE_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF8", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"BM", 0, "image/bmp"),
)


def _image_url(data: Any) -> str:
    if not isinstance(data, str) or not data:
        raise TranslateError("images must be base64-encoded strings")
    if data.startswith("data:"):
        return data
    head = data[:16]
    try:
        raw = base64.b64decode(head + "=" * (-len(head) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TranslateError("images must be base64-encoded strings") from exc
    # llama-server decodes by content, so an unrecognised type only affects the label.
    mime = next((m for magic, at, m in _IMAGE_MAGIC if raw[at : at + len(magic)] == magic), "image/png")
    return f"data:{mime};base64,{data}"


def _content(text: str, images: Any) -> str | list[dict[str, Any]]:
    if not images:
        return text
    if not isinstance(images, list):
        raise TranslateError("images must be a list of base64-encoded strings")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": _image_url(image)}} for image in images]
    return parts


def _claim_call_id(pending: list[tuple[str, str]], name: Any) -> str | None:
    for position, (call_id, call_name) in enumerate(pending):
        if name is None or call_name == name:
            del pending[position]
            return call_id
    return None


def _convert_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise TranslateError("messages must be a list")
    out: list[dict[str, Any]] = []
    # Tool calls still waiting for a result, so that a later role "tool" message can be paired by
    # tool_name. Ids are positional rather than random: an identical history then renders to an
    # identical prompt, which keeps llama-server's prompt cache warm across turns.
    pending: list[tuple[str, str]] = []
    serial = 0
    for index, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise TranslateError(f"messages[{index}] must be an object")
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise TranslateError(f"messages[{index}].role is required")
        text = msg.get("content") or ""
        if not isinstance(text, str):
            raise TranslateError(f"messages[{index}].content must be a string")
        item: dict[str, Any] = {"role": role, "content": _content(text, msg.get("images"))}
        if role == "assistant":
            calls = []
            for call in msg.get("tool_calls") or []:
                function = (call or {}).get("function") or {}
                name = str(function.get("name") or "")
                call_id = str(call.get("id") or f"call_{serial}")
                serial += 1
                arguments = function.get("arguments") or {}
                if not isinstance(arguments, str):
                    arguments = json.dumps(arguments, ensure_ascii=False)
                calls.append(
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
                )
                pending.append((call_id, name))
            if calls:
                item["tool_calls"] = calls
            # Kept so templates that replay earlier reasoning can; others ignore it.
            if isinstance(msg.get("thinking"), str) and msg["thinking"]:
                item["reasoning_content"] = msg["thinking"]
        elif role == "tool":
            tool_name = msg.get("tool_name")
            answers = msg.get("tool_call_id") or _claim_call_id(pending, tool_name)
            if answers:
                item["tool_call_id"] = answers
            if tool_name:
                item["name"] = tool_name
        out.append(item)
    return out


def _response_format(fmt: Any, *, native: bool) -> dict[str, Any]:
    if fmt is None or fmt == "":
        return {}
    if fmt == "json":
        return {"json_schema": {}} if native else {"response_format": {"type": "json_object"}}
    if isinstance(fmt, Mapping):
        if native:
            return {"json_schema": dict(fmt)}
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": dict(fmt)},
            }
        }
    raise TranslateError(f'invalid format {fmt!r}: use "json" or a JSON schema object')


def _think(think: Any) -> dict[str, Any]:
    if think is None:
        return {}
    if think is True:
        return {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_format": "deepseek"}
    if think is False:
        return {"chat_template_kwargs": {"enable_thinking": False}}
    if think in ("high", "medium", "low"):
        # Newer llama-server reads reasoning_effort directly; older ones only pass template kwargs.
        return {
            "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": think},
            "reasoning_effort": think,
            "reasoning_format": "deepseek",
        }
    raise TranslateError(f'invalid think value {think!r}: use true, false, "high", "medium" or "low"')


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise TranslateError("model is required")
    return model


def _stream(body: Mapping[str, Any]) -> bool:
    # Ollama streams unless told otherwise.
    return body.get("stream") is not False


def _chat_body(body: Mapping[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    stream = _stream(body)
    out: dict[str, Any] = {"model": _model(body), "messages": messages, "stream": stream}
    if stream:
        out["stream_options"] = {"include_usage": True}
    out["timings_per_token"] = False
    out.update(_response_format(body.get("format"), native=False))
    out.update(parse_options(body.get("options")))
    out.update(_think(body.get("think")))
    return out


def ollama_chat_to_openai(body: Mapping[str, Any]) -> dict[str, Any]:
    """An Ollama ``/api/chat`` body as a ``/v1/chat/completions`` body (``model`` kept as asked)."""
    out = _chat_body(body, _convert_messages(body.get("messages") or []))
    tools = body.get("tools")
    # An empty tools list is dropped: llama-server may refuse it instead of reading it as "no tools".
    if tools:
        if not isinstance(tools, list):
            raise TranslateError("tools must be a list")
        out["tools"] = list(tools)
    return out


def ollama_generate_to_openai(
    body: Mapping[str, Any], *, templated: bool = True
) -> tuple[str, dict[str, Any]]:
    """An Ollama ``/api/generate`` body as ``(llama-server path, body)``.

    Raw prompts, and all prompts of a model without a chat template (``templated`` false), go to
    the native ``/completion`` as they are, not through llama-server's ChatML fallback. The route
    lays ``context`` in front (``proxy/ollama_generate.py``); ``template`` is ignored."""
    model = _model(body)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise TranslateError("prompt must be a string")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise TranslateError("suffix must be a string")
    if suffix or body.get("raw") or not templated:
        native: dict[str, Any] = {"model": model, "stream": _stream(body)}
        if suffix:
            path = "/infill"
            native.update(input_prefix=prompt, input_suffix=suffix)
        else:
            path = "/completion"
            native["prompt"] = prompt
        native.update(_response_format(body.get("format"), native=True))
        native.update(parse_options(body.get("options"), native=True))
        return path, native
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        if not isinstance(system, str):
            raise TranslateError("system must be a string")
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _content(prompt, body.get("images"))})
    return "/v1/chat/completions", _chat_body(body, messages)


def is_load_only(body: Mapping[str, Any]) -> bool:
    """True for Ollama's "just load the model" requests: nothing to chat about, generate or embed."""
    if "messages" in body:
        return not body.get("messages")
    if "input" in body:
        return not body.get("input")
    return not body.get("prompt") and not body.get("images") and not body.get("suffix")


def ollama_embed_to_openai(body: Mapping[str, Any]) -> dict[str, Any]:
    """An Ollama ``/api/embed`` body as a ``/v1/embeddings`` body.

    ``dimensions`` is applied on the way back (see :func:`openai_embeddings_to_ollama_embed`) since
    llama-server cannot shorten vectors. ``truncate`` is not forwarded: llama-server has no
    per-request switch for it and refuses an over-long input instead of cutting it.
    """
    model = _model(body)
    text = body.get("input")
    valid_list = isinstance(text, list) and all(isinstance(item, str) for item in text)
    if not isinstance(text, str) and not valid_list:
        raise TranslateError("input must be a string or a list of strings")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        raise TranslateError("dimensions must be a positive integer")
    return {"model": model, "input": text, "encoding_format": "float"}


def ollama_embeddings_to_openai(body: Mapping[str, Any]) -> dict[str, Any]:
    """A legacy Ollama ``/api/embeddings`` body (single ``prompt``) as a ``/v1/embeddings`` body."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise TranslateError("prompt must be a string")
    return {"model": _model(body), "input": prompt, "encoding_format": "float"}


# -- errors and model listing ---------------------------------------------------------------------


def ollama_error(message: str) -> dict[str, Any]:
    return {"error": message}


def openai_error(
    message: str, type_: str = "invalid_request_error", code: int | str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def ollama_model_name(name: str) -> str:
    """``name`` with Ollama's implicit ``:latest`` tag; a colon in a registry host is not a tag."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def strip_latest(name: str) -> str:
    return name.removesuffix(":latest")


def digest_for(path: str, size: int, mtime_ns: int) -> str:
    """A stable sha256 hex for a model file, from its identity rather than its (huge) contents."""
    return hashlib.sha256(f"{path}\0{size}\0{mtime_ns}".encode()).hexdigest()

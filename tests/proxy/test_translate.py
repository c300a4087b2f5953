"""Ollama <-> llama-server translation, checked against the official ollama client's response types."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from ollama import ChatResponse, EmbeddingsResponse, EmbedResponse, GenerateResponse, Message
from pydantic import BaseModel

from llamaman.proxy.translate import (
    LOAD_TIME_OPTIONS,
    OllamaChatStream,
    TranslateError,
    digest_for,
    format_rfc3339,
    format_rfc3339_ns,
    is_load_only,
    load_options,
    native_completion_to_ollama,
    ollama_chat_to_openai,
    ollama_embed_to_openai,
    ollama_embeddings_to_openai,
    ollama_error,
    ollama_generate_to_openai,
    ollama_model_name,
    openai_chat_response_to_ollama,
    openai_embeddings_to_ollama_embed,
    openai_embeddings_to_ollama_embeddings,
    openai_error,
    parse_keep_alive,
    parse_options,
    strip_latest,
)

RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")
START_NS = 1_000_000_000
LOAD_NS = 200_000_000
WALL_NS = 1_700_000_000_123_456_789


def fixed(value: int) -> Callable[[], int]:
    return lambda: value


def assert_shape(model_cls: type[BaseModel], obj: Mapping[str, Any]) -> BaseModel:
    """Validate with the official client and refuse any key it does not know (a typo'd field)."""
    parsed = model_cls.model_validate(obj)
    unknown = set(obj) - set(model_cls.model_fields)
    assert not unknown, f"{model_cls.__name__} has no fields {unknown}"
    message = obj.get("message")
    if isinstance(message, Mapping):
        assert not set(message) - set(Message.model_fields)
    return parsed


def stream(generate: bool = False, now: int = START_NS + 2_000_000_000) -> OllamaChatStream:
    return OllamaChatStream(
        "m:latest",
        generate=generate,
        load_duration_ns=LOAD_NS,
        started_ns=START_NS,
        clock=fixed(now),
        wall_clock=fixed(WALL_NS),
    )


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


PNG = b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
JPEG = b64(b"\xff\xd8\xff\xe0" + b"\0" * 32)
GIF = b64(b"GIF89a" + b"\0" * 32)
WEBP = b64(b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 32)
OTHER = b64(b"\x00\x01\x02\x03" * 10)

# -- requests: chat -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {"stream": True, "stream_options": {"include_usage": True}, "timings_per_token": False}),
        ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
        ({"stream": False}, {"stream": False, "timings_per_token": False}),
        ({"format": "json"}, {"response_format": {"type": "json_object"}}),
        (
            {"format": {"type": "object", "properties": {"a": {"type": "string"}}}},
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "response",
                        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                    },
                }
            },
        ),
        (
            {"think": True},
            {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_format": "deepseek"},
        ),
        ({"think": False}, {"chat_template_kwargs": {"enable_thinking": False}}),
        (
            {"think": "high"},
            {
                "reasoning_effort": "high",
                "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"},
                "reasoning_format": "deepseek",
            },
        ),
        ({"think": "low"}, {"reasoning_effort": "low"}),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
        ),
        ({"options": {"temperature": 0.2, "num_predict": 64}}, {"temperature": 0.2, "max_tokens": 64}),
    ],
)
def test_chat_request_fields(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    out = ollama_chat_to_openai({"model": "llama3", "messages": [{"role": "user", "content": "hi"}], **extra})
    assert out["model"] == "llama3"
    assert out["messages"] == [{"role": "user", "content": "hi"}]
    for key, value in expected.items():
        assert out[key] == value, key


@pytest.mark.parametrize(
    ("extra", "absent"),
    [
        ({"stream": False}, "stream_options"),
        ({"tools": []}, "tools"),
        ({"format": ""}, "response_format"),
        ({}, "chat_template_kwargs"),
        ({}, "reasoning_format"),
        ({"options": {"num_predict": -1}}, "max_tokens"),
        ({"options": {"num_predict": -2}}, "max_tokens"),
        ({"keep_alive": "5m", "template": "x"}, "keep_alive"),
    ],
)
def test_chat_request_omits(extra: dict[str, Any], absent: str) -> None:
    out = ollama_chat_to_openai({"model": "m", "messages": [], **extra})
    assert absent not in out


@pytest.mark.parametrize(
    ("image", "mime"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (WEBP, "image/webp"),
        (OTHER, "image/png"),
    ],
)
def test_chat_images_become_parts_with_sniffed_mime(image: str, mime: str) -> None:
    out = ollama_chat_to_openai(
        {"model": "m", "messages": [{"role": "user", "content": "what?", "images": [image]}]}
    )
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image}"}},
    ]


def test_chat_image_without_text_and_data_url_passthrough() -> None:
    url = f"data:image/jpeg;base64,{JPEG}"
    out = ollama_chat_to_openai({"model": "m", "messages": [{"role": "user", "images": [PNG, url]}]})
    assert out["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": url}},
    ]


def test_chat_tool_history_pairs_results_with_generated_ids() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "",
                "thinking": "need two lookups",
                "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                    {"function": {"name": "time", "arguments": {"tz": "CET"}}},
                ],
            },
            {"role": "tool", "content": "12:00", "tool_name": "time"},
            {"role": "tool", "content": "sunny", "tool_name": "weather"},
        ],
    }
    msgs = ollama_chat_to_openai(body)["messages"]
    calls = msgs[1]["tool_calls"]
    assert [c["type"] for c in calls] == ["function", "function"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert isinstance(calls[1]["function"]["arguments"], str)
    assert len({c["id"] for c in calls}) == 2
    assert msgs[1]["reasoning_content"] == "need two lookups"
    assert msgs[2] == {"role": "tool", "content": "12:00", "tool_call_id": calls[1]["id"], "name": "time"}
    assert msgs[3]["tool_call_id"] == calls[0]["id"]
    # Same history, same ids: keeps the rendered prompt stable for the prompt cache.
    assert ollama_chat_to_openai(body)["messages"] == msgs


def test_chat_tool_result_without_name_takes_next_pending_call() -> None:
    msgs = ollama_chat_to_openai(
        {
            "model": "m",
            "messages": [
                {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
                {"role": "tool", "content": "ok"},
                {"role": "tool", "content": "orphan", "tool_name": "g"},
            ],
        }
    )["messages"]
    assert msgs[1]["tool_call_id"] == msgs[0]["tool_calls"][0]["id"]
    assert "tool_call_id" not in msgs[2]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"model": "", "messages": []},
        {"model": "m", "messages": "hi"},
        {"model": "m", "messages": [{"content": "no role"}]},
        {"model": "m", "messages": [{"role": "user", "content": 3}]},
        {"model": "m", "messages": [{"role": "user", "images": "notalist"}]},
        {"model": "m", "messages": [{"role": "user", "images": [5]}]},
        {"model": "m", "messages": [], "format": "xml"},
        {"model": "m", "messages": [], "think": "extreme"},
        {"model": "m", "messages": [], "tools": {"f": 1}},
        {"model": "m", "messages": [], "options": [1]},
        {"model": "m", "messages": [], "options": {"temperature": "hot"}},
        {"model": "m", "messages": [], "options": {"top_k": 1.5}},
        {"model": "m", "messages": [], "options": {"seed": True}},
        {"model": "m", "messages": [], "options": {"stop": [1]}},
    ],
)
def test_chat_request_rejects(body: dict[str, Any]) -> None:
    with pytest.raises(TranslateError):
        ollama_chat_to_openai(body)


# -- requests: options, keep_alive ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "native", "expected"),
    [
        (None, False, {}),
        (
            {
                "temperature": 1,
                "top_p": 0.9,
                "top_k": 40,
                "min_p": 0.05,
                "seed": 7,
                "num_predict": 100,
                "repeat_penalty": 1.1,
                "repeat_last_n": 64,
                "presence_penalty": 0.5,
                "frequency_penalty": 0.25,
                "typical_p": 0.95,
                "mirostat": 2,
                "mirostat_tau": 5.0,
                "mirostat_eta": 0.1,
                "num_keep": 4,
            },
            False,
            {
                "temperature": 1.0,
                "top_p": 0.9,
                "top_k": 40,
                "min_p": 0.05,
                "seed": 7,
                "max_tokens": 100,
                "repeat_penalty": 1.1,
                "repeat_last_n": 64,
                "presence_penalty": 0.5,
                "frequency_penalty": 0.25,
                "typical_p": 0.95,
                "mirostat": 2,
                "mirostat_tau": 5.0,
                "mirostat_eta": 0.1,
                "n_keep": 4,
            },
        ),
        ({"num_predict": 12, "top_k": 3.0}, True, {"n_predict": 12, "top_k": 3}),
        ({"num_predict": 0}, False, {"max_tokens": 0}),
        ({"num_predict": -1}, True, {}),
        ({"stop": "\n"}, False, {"stop": ["\n"]}),
        ({"stop": ["a", "b"]}, True, {"stop": ["a", "b"]}),
        ({"stop": []}, False, {}),
        ({"tfs_z": 1.0, "penalize_newline": True, "num_ctx": 8192, "num_gpu": 99, "bogus": 1}, False, {}),
        ({"temperature": None}, False, {}),
    ],
)
def test_parse_options(options: Any, native: bool, expected: dict[str, Any]) -> None:
    assert parse_options(options, native=native) == expected


def test_load_options_are_the_complement() -> None:
    opts = {"num_ctx": 8192, "num_gpu": 99, "temperature": 0.1, "use_mmap": None}
    assert load_options(opts) == {"num_ctx": 8192, "num_gpu": 99}
    assert load_options(None) == {}
    assert "num_ctx" in LOAD_TIME_OPTIONS


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("10s", 10.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("2h45m30.5s", 9930.5),
        ("500us", 0.0005),
        (" 5m ", 300.0),
        (300, 300.0),
        (2.5, 2.5),
        ("600", 600.0),
        (0, 0.0),
        ("0", 0.0),
        ("0s", 0.0),
        (-1, math.inf),
        ("-1", math.inf),
        ("-1m", math.inf),
        (-0.5, math.inf),
    ],
)
def test_parse_keep_alive(value: Any, seconds: float | None) -> None:
    result = parse_keep_alive(value)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["5 minutes", "1d", "m5", "5mm", "--1", "abc", True, [5], {"s": 1}, float("nan")]
)
def test_parse_keep_alive_rejects(value: Any) -> None:
    with pytest.raises(TranslateError, match="keep_alive"):
        parse_keep_alive(value)
    assert issubclass(TranslateError, ValueError)


# -- requests: generate, embed --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "path", "expected"),
    [
        (
            {"model": "m", "prompt": "hi"},
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "stream": True},
        ),
        (
            {
                "model": "m",
                "prompt": "hi",
                "system": "be brief",
                "stream": False,
                "template": "{{ .Prompt }}",
            },
            "/v1/chat/completions",
            {
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "stream": False,
            },
        ),
        (
            {"model": "m", "prompt": "look", "images": [JPEG]},
            "/v1/chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
                        ],
                    }
                ]
            },
        ),
        (
            {"model": "m", "prompt": "hi", "think": True, "format": "json", "context": [1, 2, 3]},
            "/v1/chat/completions",
            {"reasoning_format": "deepseek", "response_format": {"type": "json_object"}},
        ),
        (
            {
                "model": "m",
                "prompt": "<s>[INST] hi",
                "raw": True,
                "options": {"num_predict": 5, "temperature": 0},
            },
            "/completion",
            {"prompt": "<s>[INST] hi", "n_predict": 5, "temperature": 0.0, "stream": True},
        ),
        (
            {"model": "m", "prompt": "x", "raw": True, "stream": False, "format": {"type": "object"}},
            "/completion",
            {"prompt": "x", "stream": False, "json_schema": {"type": "object"}},
        ),
        (
            {"model": "m", "prompt": "x", "raw": True, "format": "json"},
            "/completion",
            {"json_schema": {}},
        ),
        (
            {"model": "m", "prompt": "def f(", "suffix": "\n    return x", "options": {"stop": "\n\n"}},
            "/infill",
            {"input_prefix": "def f(", "input_suffix": "\n    return x", "stop": ["\n\n"], "stream": True},
        ),
    ],
)
def test_generate_routes(body: dict[str, Any], path: str, expected: dict[str, Any]) -> None:
    got_path, out = ollama_generate_to_openai(body)
    assert got_path == path
    assert out["model"] == "m"
    for key, value in expected.items():
        assert out[key] == value, key
    for ignored in ("template", "context", "system", "raw", "suffix", "images", "options", "format"):
        assert ignored not in out
    if path != "/v1/chat/completions":
        assert "max_tokens" not in out and "messages" not in out


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x"},
        {"model": "m", "prompt": 5},
        {"model": "m", "suffix": 1},
        {"model": "m", "system": ["x"], "prompt": "a"},
    ],
)
def test_generate_rejects(body: dict[str, Any]) -> None:
    with pytest.raises(TranslateError):
        ollama_generate_to_openai(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "m", "prompt": ""}, True),
        ({"model": "m"}, True),
        ({"model": "m", "prompt": "hi"}, False),
        ({"model": "m", "images": [PNG]}, False),
        ({"model": "m", "messages": []}, True),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, False),
        ({"model": "m", "input": []}, True),
        ({"model": "m", "input": "x"}, False),
    ],
)
def test_is_load_only(body: dict[str, Any], expected: bool) -> None:
    assert is_load_only(body) is expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "e", "input": "hello"}, {"model": "e", "input": "hello", "encoding_format": "float"}),
        (
            {"model": "e", "input": ["a", "b"], "truncate": False, "dimensions": 2, "keep_alive": 0},
            {"model": "e", "input": ["a", "b"], "encoding_format": "float"},
        ),
    ],
)
def test_embed_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert ollama_embed_to_openai(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        {"model": "e"},
        {"model": "e", "input": [1]},
        {"model": "e", "input": "x", "dimensions": 0},
        {"input": "x"},
    ],
)
def test_embed_request_rejects(body: dict[str, Any]) -> None:
    with pytest.raises(TranslateError):
        ollama_embed_to_openai(body)


def test_legacy_embeddings_request() -> None:
    assert ollama_embeddings_to_openai({"model": "e", "prompt": "hi"}) == {
        "model": "e",
        "input": "hi",
        "encoding_format": "float",
    }
    with pytest.raises(TranslateError):
        ollama_embeddings_to_openai({"model": "e"})


# -- replies: streaming ---------------------------------------------------------------------------

TIMINGS = {"prompt_n": 11, "prompt_ms": 13.5, "predicted_n": 18, "predicted_ms": 52.25, "cache_n": 100}
USAGE = {"prompt_tokens": 111, "completion_tokens": 18, "total_tokens": 129}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"object": "chat.completion.chunk", "choices": choices, **extra}


def test_stream_text_chunks_then_done_with_timings() -> None:
    s = stream()
    objs = s.feed(chunk({"role": "assistant", "content": None}))
    objs += s.feed(chunk({"content": "Hel"}))
    objs += s.feed(chunk({"content": "lo"}, finish="stop"))
    objs += s.feed(chunk(None, usage=USAGE, timings=TIMINGS))
    assert [o["message"]["content"] for o in objs] == ["Hel", "lo"]
    for o in objs:
        assert o["done"] is False and o["model"] == "m:latest" and o["message"]["role"] == "assistant"
        assert RFC3339_NANO.match(o["created_at"])
        assert_shape(ChatResponse, o)
    done = s.finish()
    assert_shape(ChatResponse, done)
    assert done["done"] is True and done["done_reason"] == "stop"
    assert done["message"] == {"role": "assistant", "content": ""}
    assert done["total_duration"] == 2_000_000_000
    assert done["load_duration"] == LOAD_NS
    assert (done["prompt_eval_count"], done["prompt_eval_duration"]) == (11, 13_500_000)
    assert (done["eval_count"], done["eval_duration"]) == (18, 52_250_000)
    assert "context" not in done
    assert RFC3339_NANO.match(done["created_at"])


def test_stream_falls_back_to_usage_and_measured_durations() -> None:
    now = [START_NS + LOAD_NS + 300]
    s = OllamaChatStream("m", load_duration_ns=LOAD_NS, started_ns=START_NS, clock=lambda: now[0])
    s.feed(chunk({"content": "a"}))
    now[0] += 700
    s.feed(chunk({}, finish="length", usage=USAGE))
    done = s.finish()
    assert_shape(ChatResponse, done)
    assert done["done_reason"] == "length"
    assert (done["prompt_eval_count"], done["eval_count"]) == (111, 18)
    assert (done["prompt_eval_duration"], done["eval_duration"]) == (300, 700)
    assert done["total_duration"] == LOAD_NS + 1000


def test_stream_tool_call_fragments_assembled_across_chunks() -> None:
    s = stream()
    first = {
        "index": 0,
        "id": "abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    objs = s.feed(chunk({"tool_calls": [first]}))
    objs += s.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}))
    objs += s.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ris", "days": 3}'}}]}))
    assert objs == []
    objs = s.feed(chunk({}, finish="tool_calls"))
    assert len(objs) == 1
    assert_shape(ChatResponse, objs[0])
    assert objs[0]["done"] is False
    assert objs[0]["message"]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}
    ]
    parsed = ChatResponse.model_validate(objs[0])
    assert parsed.message.tool_calls[0].function.arguments == {"city": "Paris", "days": 3}
    done = s.finish()
    assert done["done_reason"] == "stop" and "tool_calls" not in done["message"]


def test_stream_parallel_tool_calls_and_unfinished_stream() -> None:
    s = stream()
    s.feed(chunk({"tool_calls": [{"index": 0, "function": {"name": "a", "arguments": "{}"}}]}))
    s.feed(chunk({"tool_calls": [{"index": 1, "function": {"name": "b", "arguments": '{"x": 1}'}}]}))
    s.feed(chunk({"tool_calls": [{"index": 1, "function": {"arguments": ""}}]}))
    # No finish_reason ever arrived: the calls still reach the client, in the closing object.
    done = s.finish()
    assert_shape(ChatResponse, done)
    assert done["message"]["tool_calls"] == [
        {"function": {"name": "a", "arguments": {}}},
        {"function": {"name": "b", "arguments": {"x": 1}}},
    ]


@pytest.mark.parametrize("generate", [False, True])
def test_stream_thinking(generate: bool) -> None:
    s = stream(generate=generate)
    objs = s.feed(chunk({"reasoning_content": "hmm"}))
    objs += s.feed(chunk({"content": "42"}, finish="stop", timings=TIMINGS))
    if generate:
        assert [(o["response"], o.get("thinking")) for o in objs] == [("", "hmm"), ("42", None)]
        for o in objs:
            assert_shape(GenerateResponse, o)
    else:
        assert [(o["message"]["content"], o["message"].get("thinking")) for o in objs] == [
            ("", "hmm"),
            ("42", None),
        ]
        for o in objs:
            assert_shape(ChatResponse, o)


def test_stream_generate_done_has_context_and_no_message() -> None:
    s = stream(generate=True)
    objs = s.feed(chunk({"content": "hi"}))
    done = s.finish()
    for o in [*objs, done]:
        assert_shape(GenerateResponse, o)
        assert "message" not in o
    assert done["response"] == "" and done["context"] == [] and done["done"] is True


def test_stream_relays_upstream_error() -> None:
    s = stream()
    assert s.feed({"error": {"code": 500, "message": "boom", "type": "server_error"}}) == [{"error": "boom"}]
    assert s.feed_native({"error": "bad"}) == [{"error": "bad"}]


@pytest.mark.parametrize(
    ("stop_type", "reason"),
    [("eos", "stop"), ("word", "stop"), ("limit", "length")],
)
def test_stream_native_chunks(stop_type: str, reason: str) -> None:
    s = stream(generate=True)
    objs = s.feed_native({"content": "def", "stop": False})
    objs += s.feed_native({"content": " f", "stop": False})
    objs += s.feed_native(
        {
            "content": "",
            "stop": True,
            "stop_type": stop_type,
            "timings": TIMINGS,
            "tokens_predicted": 18,
            "tokens_evaluated": 111,
        }
    )
    assert [o["response"] for o in objs] == ["def", " f"]
    done = s.finish()
    assert_shape(GenerateResponse, done)
    assert done["done_reason"] == reason
    assert (done["prompt_eval_count"], done["eval_count"], done["eval_duration"]) == (11, 18, 52_250_000)


def test_stream_native_counts_without_timings() -> None:
    s = stream(generate=True)
    s.feed_native(
        {"content": "", "stop": True, "stop_type": "eos", "tokens_predicted": 3, "tokens_evaluated": 9}
    )
    done = s.finish()
    assert (done["prompt_eval_count"], done["eval_count"]) == (9, 3)


# -- replies: non-streamed ------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        **extra,
    }


@pytest.mark.parametrize(
    ("resp", "message", "reason", "counts"),
    [
        (
            completion({"role": "assistant", "content": "hi"}, timings=TIMINGS, usage=USAGE),
            {"role": "assistant", "content": "hi"},
            "stop",
            (11, 13_500_000, 18, 52_250_000),
        ),
        (
            completion(
                {"role": "assistant", "content": "x", "reasoning_content": "let me see"},
                "length",
                usage=USAGE,
            ),
            {"role": "assistant", "content": "x", "thinking": "let me see"},
            "length",
            (111, None, 18, None),
        ),
        (
            completion(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": [1, 2]}'},
                        },
                        {"id": "2", "type": "function", "function": {"name": "g", "arguments": "not json"}},
                    ],
                },
                "tool_calls",
                timings=TIMINGS,
            ),
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "f", "arguments": {"a": [1, 2]}}},
                    {"function": {"name": "g", "arguments": {}}},
                ],
            },
            "stop",
            (11, 13_500_000, 18, 52_250_000),
        ),
    ],
)
def test_chat_response_non_stream(
    resp: dict[str, Any], message: dict[str, Any], reason: str, counts: tuple[Any, ...]
) -> None:
    out = openai_chat_response_to_ollama(
        resp,
        "m:latest",
        load_duration_ns=LOAD_NS,
        started_ns=START_NS,
        clock=fixed(START_NS + 5),
        wall_clock=fixed(WALL_NS),
    )
    assert_shape(ChatResponse, out)
    assert out["message"] == message and out["done"] is True and out["done_reason"] == reason
    assert out["total_duration"] == 5 and out["load_duration"] == LOAD_NS
    got = (out["prompt_eval_count"], out["prompt_eval_duration"], out["eval_count"], out["eval_duration"])
    assert tuple(g if c is not None else None for g, c in zip(got, counts, strict=True)) == counts
    assert out["created_at"] == "2023-11-14T22:13:20.123456789Z"


def test_generate_response_non_stream() -> None:
    resp = completion({"role": "assistant", "content": "4", "reasoning_content": "2+2"}, timings=TIMINGS)
    out = openai_chat_response_to_ollama(resp, "m", generate=True, started_ns=START_NS, clock=fixed(START_NS))
    assert_shape(GenerateResponse, out)
    assert (out["response"], out["thinking"], out["context"], out["eval_count"]) == ("4", "2+2", [], 18)


@pytest.mark.parametrize(("stop_type", "reason"), [("eos", "stop"), ("limit", "length")])
def test_native_completion_non_stream(stop_type: str, reason: str) -> None:
    resp = {
        "content": " world",
        "stop": True,
        "stop_type": stop_type,
        "timings": TIMINGS,
        "tokens_predicted": 18,
    }
    out = native_completion_to_ollama(resp, "m", started_ns=START_NS, clock=fixed(START_NS + 9))
    assert_shape(GenerateResponse, out)
    assert (out["response"], out["done_reason"], out["total_duration"], out["prompt_eval_count"]) == (
        " world",
        reason,
        9,
        11,
    )


@pytest.mark.parametrize(
    "convert",
    [
        lambda r: openai_chat_response_to_ollama(r, "m", started_ns=0),
        lambda r: native_completion_to_ollama(r, "m", started_ns=0),
    ],
)
def test_non_stream_error_passthrough(convert: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    assert convert({"error": {"message": "ctx exceeded", "code": 400}}) == {"error": "ctx exceeded"}


# -- replies: embeddings --------------------------------------------------------------------------

EMBED_RESP = {
    "object": "list",
    "data": [
        {"object": "embedding", "index": 1, "embedding": [0.0, 3.0, 4.0]},
        {"object": "embedding", "index": 0, "embedding": [0.6, 0.8, 0.0]},
    ],
    "usage": {"prompt_tokens": 7, "total_tokens": 7},
}


@pytest.mark.parametrize(
    ("dimensions", "vectors"),
    [(None, [[0.6, 0.8, 0.0], [0.0, 3.0, 4.0]]), (2, [[0.6, 0.8], [0.0, 1.0]])],
)
def test_embed_response(dimensions: int | None, vectors: list[list[float]]) -> None:
    out = openai_embeddings_to_ollama_embed(
        EMBED_RESP, "e:latest", dimensions=dimensions, load_duration_ns=3, started_ns=10, clock=fixed(25)
    )
    assert_shape(EmbedResponse, out)
    assert out["embeddings"] == [pytest.approx(v) for v in vectors]
    assert (out["model"], out["total_duration"], out["load_duration"], out["prompt_eval_count"]) == (
        "e:latest",
        15,
        3,
        7,
    )


def test_legacy_embeddings_response() -> None:
    out = openai_embeddings_to_ollama_embeddings(EMBED_RESP)
    assert_shape(EmbeddingsResponse, out)
    assert out == {"embedding": [0.6, 0.8, 0.0]}
    assert openai_embeddings_to_ollama_embeddings({"data": []}) == {"embedding": []}


# -- errors, names, timestamps --------------------------------------------------------------------


def test_error_shapes() -> None:
    assert ollama_error("model 'x' not found") == {"error": "model 'x' not found"}
    assert openai_error("nope", "not_found_error", "model_not_found") == {
        "error": {"message": "nope", "type": "not_found_error", "code": "model_not_found"}
    }
    assert openai_error("bad")["error"] == {"message": "bad", "type": "invalid_request_error", "code": None}


@pytest.mark.parametrize(
    ("name", "full", "short"),
    [
        ("llama3", "llama3:latest", "llama3"),
        ("llama3:8b", "llama3:8b", "llama3:8b"),
        ("llama3:latest", "llama3:latest", "llama3"),
        ("hf.co/org/model-GGUF:Q4_K_M", "hf.co/org/model-GGUF:Q4_K_M", "hf.co/org/model-GGUF:Q4_K_M"),
        ("registry:5000/ns/model", "registry:5000/ns/model:latest", "registry:5000/ns/model"),
    ],
)
def test_model_names(name: str, full: str, short: str) -> None:
    assert ollama_model_name(name) == full
    assert strip_latest(full) == short


def test_digest_for_is_stable_and_sensitive() -> None:
    digest = digest_for("/models/a.gguf", 123, 456)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == digest_for("/models/a.gguf", 123, 456)
    assert len({digest, digest_for("/models/a.gguf", 124, 456), digest_for("/models/a.gguf", 123, 457)}) == 3


@pytest.mark.parametrize(
    ("ts", "text"),
    [(0.0, "1970-01-01T00:00:00.000000Z"), (1_700_000_000.25, "2023-11-14T22:13:20.250000Z")],
)
def test_format_rfc3339(ts: float, text: str) -> None:
    assert format_rfc3339(ts) == text
    assert RFC3339_NANO.match(text)


@pytest.mark.parametrize(
    ("ns", "text"),
    [(0, "1970-01-01T00:00:00.000000000Z"), (WALL_NS, "2023-11-14T22:13:20.123456789Z")],
)
def test_format_rfc3339_ns(ns: int, text: str) -> None:
    assert format_rfc3339_ns(ns) == text
    assert RFC3339_NANO.match(text)

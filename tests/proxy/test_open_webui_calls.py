"""Open WebUI's calls, as measured from a real Open WebUI (see the clients notes), replayed with an
inference key, the kind of key Open WebUI is given: everything it does must work with one."""

from __future__ import annotations

import json

import httpx

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
MESSAGES = [{"role": "user", "content": "hello"}]


async def test_the_ollama_connection_calls_of_one_message(http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/version")).status_code == 200
    # Every page load: the model list, then what is loaded.
    tags = await http.get("/api/tags")
    assert tags.status_code == 200 and any(m["model"].startswith("tiny-a") for m in tags.json()["models"])
    assert (await http.get("/api/ps")).status_code == 200
    # One message: a title (not streamed), the answer (streamed, with tools), suggestions and tags.
    options = {"temperature": 0.7, "top_p": 0.9, "seed": 1, "num_ctx": 2048, "num_predict": 12}
    once = {"model": "tiny-a", "messages": MESSAGES, "stream": False, "options": options}
    title = await http.post("/api/chat", json={**once, "keep_alive": "5m"})
    assert title.status_code == 200 and title.json()["done"] and title.json()["message"]["content"]
    streamed = {**once, "stream": True, "tools": [WEATHER_TOOL]}
    async with http.stream("POST", "/api/chat", json=streamed) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        chunks = [json.loads(line) async for line in r.aiter_lines() if line]
    assert chunks[-1]["done"] and chunks[-1]["eval_count"] > 0
    # Follow-up suggestions and tags. (Open WebUI asks for them with format "json"; the generated test
    # models' tiny vocabulary cannot hold a JSON grammar, so they are asked for plainly here.)
    for _ in range(2):
        r = await http.post("/api/chat", json=once)
        assert r.status_code == 200 and r.json()["done"], r.text
    shown = await http.post("/api/show", json={"model": "tiny-a"})
    assert shown.status_code == 200 and "model_info" in shown.json()
    # What it may also call that changes the box is for admins: an inference key is refused.
    r = await http.request("DELETE", "/api/delete", json={"model": "tiny-a"})
    assert r.status_code == 403 and "admin" in r.json()["error"]


async def test_the_openai_connection_calls(http: httpx.AsyncClient) -> None:
    models = await http.get("/v1/models")
    assert models.status_code == 200 and any(m["id"] == "tiny-a" for m in models.json()["data"])
    body = {
        "model": "tiny-a",
        "messages": MESSAGES,
        "max_tokens": 8,
        "temperature": 0.5,
        "tools": [WEATHER_TOOL],
    }
    r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"

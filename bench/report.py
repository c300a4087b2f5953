"""The benchmarks' figures as a table: one row per measured figure, with its target and verdict."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench:begin (written by bench/run_all.py; edit outside these markers) -->"
END = "<!-- bench:end -->"


@dataclass
class Row:
    key: str
    what: str
    unit: str
    get: Callable[[dict[str, Any]], float | None]
    router: Callable[[dict[str, Any]], float | None] | None = None
    target: str = ""
    ok: Callable[[dict[str, Any]], bool | None] | None = None


def _g(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def get(r: dict[str, Any]) -> float | None:
        cur: Any = r
        for p in path:
            if not isinstance(cur, dict) or p not in cur:
                return None
            cur = cur[p]
        if isinstance(cur, list):
            return float(len(cur))
        return float(cur) if isinstance(cur, int | float) else None

    return get


def _lt(a: float | None, b: float | None, or_equal: bool = False) -> bool | None:
    if a is None or b is None:
        return None
    return a <= b if or_equal else a < b


def _le(a: float | None, limit: float) -> bool | None:
    return None if a is None else a <= limit


def _ge(a: float | None, limit: float) -> bool | None:
    return None if a is None else a >= limit


ROWS = [
    Row("P1", "added latency p50, concurrency 1", "ms", _g("P1", "c1.llamaman", "added_p50"),
        _g("P1", "c1.router", "added_p50"), "≤ 0.5",
        lambda r: _le(_g("P1", "c1.llamaman", "added_p50")(r), 0.5)),
    Row("P1", "  … of it, llama-server's own time (its timings)", "ms",
        _g("P1", "c1.llamaman", "server_added_p50"), _g("P1", "c1.router", "server_added_p50"), "(info)"),
    Row("P1", "  … over its own llama-server asked directly, in turn", "ms",
        _g("P1", "c1.llamaman", "added_own_p50"), _g("P1", "c1.router", "added_own_p50"), "(info)"),
    Row("P1", "added latency p99, concurrency 1", "ms", _g("P1", "c1.llamaman", "added_p99"),
        _g("P1", "c1.router", "added_p99"), "≤ 3", lambda r: _le(_g("P1", "c1.llamaman", "added_p99")(r), 3)),
    Row("P1", "added latency p50, concurrency 16", "ms", _g("P1", "c16.llamaman", "added_p50"),
        _g("P1", "c16.router", "added_p50"), "< router",
        lambda r: _lt(_g("P1", "c16.llamaman", "added_p50")(r), _g("P1", "c16.router", "added_p50")(r))),
    Row("P1", "added latency p99, concurrency 16", "ms", _g("P1", "c16.llamaman", "added_p99"),
        _g("P1", "c16.router", "added_p99"), "≤ router",
        lambda r: _lt(_g("P1", "c16.llamaman", "added_p99")(r), _g("P1", "c16.router", "added_p99")(r),
                      or_equal=True)),
    Row("P1", "added p50 on the main (UI) port, c=1", "ms", _g("P1", "c1.llamaman_main_port", "added_p50"),
        None, "(info)"),
    Row("P1", "  … its p99", "ms", _g("P1", "c1.llamaman_main_port", "added_p99"), None, "(info)"),
    Row("P1", "direct llama-server p50, c=1 / c=16", "ms", _g("P1", "c1.direct", "p50"),
        _g("P1", "c16.direct", "p50"), "(reference)"),
    Row("P2", "32 streams x 256 tokens vs direct", "%", _g("P2", "llamaman", "pct_of_direct"),
        _g("P2", "router", "pct_of_direct"), "≥ 98",
        lambda r: _ge(_g("P2", "llamaman", "pct_of_direct")(r), 98)),
    Row("P2", "  … through Ollama's /api/chat (NDJSON)", "%", _g("P2", "llamaman_ollama", "pct_of_direct"),
        None, "≥ 95", lambda r: _ge(_g("P2", "llamaman_ollama", "pct_of_direct")(r), 95)),
    Row("P2", "proxy CPU per streamed token (OpenAI)", "µs", _g("P2", "llamaman", "us_per_token"), None,
        "(info)"),
    Row("P2", "  … (Ollama NDJSON)", "µs", _g("P2", "llamaman_ollama", "us_per_token"), None, "(info)"),
    Row("P2", "direct llama-server tokens/s", "tok/s", _g("P2", "direct", "tokens_per_s"), None,
        "(reference)"),
    Row("P3", "cold start over server start->healthy", "ms",
        _g("P3", "llamaman", "over_server_start_ms"), _g("P3", "router", "over_server_start_ms"), "≤ 50",
        lambda r: _le(_g("P3", "llamaman", "over_server_start_ms")(r), 50)),
    Row("P3", "llama-server start->healthy", "ms", _g("P3", "server_start_to_healthy_ms"), None,
        "(reference)"),
    Row("P4", "mixed burst, 12 x 5 on 3 gemma copies: wall time", "s", _g("P4", "llamaman", "wall_s"),
        _g("P4", "router", "wall_s"), "≤ 0.6 x router",
        lambda r: _le(_g("P4", "ratio")(r), 0.6)),
    Row("P4", "mixed burst: model loads", "", _g("P4", "llamaman", "loads"), _g("P4", "router", "loads"), ""),
    Row("P4", "mixed burst: p95", "ms", _g("P4", "llamaman", "p95_ms"), _g("P4", "router", "p95_ms"),
        "(info)"),
    Row("P4", "mixed burst: errors", "", _g("P4", "llamaman", "errors"), _g("P4", "router", "errors"), "0",
        lambda r: _le(_g("P4", "llamaman", "errors")(r), 0)),
    Row("P5", "1,000 streams: errors", "", _g("P5", "errors"), None, "0",
        lambda r: _le(_g("P5", "errors")(r), 0)),
    Row("P5", "1,000 streams: p99 stream time", "ms", _g("P5", "p99_ms"), None, "(info)"),
    Row("P5", "1,000 streams: peak RSS of LlamaMan", "MB", _g("P5", "peak_rss_mb"), None, "≤ 300",
        lambda r: _le(_g("P5", "peak_rss_mb")(r), 300)),
    Row("P6", "idle with UI: RSS (peak)", "MB", _g("P6", "rss_peak_mb"), None, "≤ 150",
        lambda r: _le(_g("P6", "rss_peak_mb")(r), 150)),
    Row("P6", "idle with UI: CPU", "%", _g("P6", "cpu_percent"), None, "≤ 0.5",
        lambda r: _le(_g("P6", "cpu_percent")(r), 0.5)),
    Row("P7", "packing, memory-aware: wall time", "s", _g("P7", "memory", "wall_s"), None, "< count LRU",
        lambda r: _lt(_g("P7", "memory", "wall_s")(r), _g("P7", "count", "wall_s")(r))),
    Row("P7", "packing, count-based LRU at its best count: wall time", "s", _g("P7", "count", "wall_s"), None,
        "(reference)"),
    Row("P7", "packing: loads, memory-aware", "", _g("P7", "memory", "loads"), None, "≤ count LRU",
        lambda r: _le(_g("P7", "memory", "loads")(r), _g("P7", "count", "loads")(r) or 0)),
    Row("P7", "packing: loads, count-based LRU", "", _g("P7", "count", "loads"), None, "(reference)"),
]  # fmt: skip


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}"


def _verdict(row: Row, r: dict[str, Any]) -> str:
    if row.ok is None:
        return ""
    ok = row.ok(r)
    return "-" if ok is None else ("pass" if ok else "MISS")


def _lines(results: dict[str, Any], before: dict[str, Any] | None) -> list[list[str]]:
    out = []
    for row in ROWS:
        if row.key not in results:
            continue
        cells = [row.key, row.what + (f" ({row.unit})" if row.unit else "")]
        if before is not None:
            cells.append(_fmt(row.get(before)) if row.key in before else "")
        cells += [_fmt(row.get(results)), _fmt(row.router(results)) if row.router else "", row.target,
                  _verdict(row, results)]  # fmt: skip
        out.append(cells)
    return out


def _header(before: dict[str, Any] | None) -> list[str]:
    return ["", "figure", *(["LlamaMan before"] if before is not None else []), "LlamaMan",
            "router mode", "target", ""]  # fmt: skip


def render_table(results: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    rows = [_header(before), *_lines(results, before)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    problems = _problems(results)
    return "\n".join(text + (["", *problems] if problems else []))


def _problems(results: dict[str, Any]) -> list[str]:
    """Correctness under load: every error any benchmark saw."""
    out = []
    for key, r in results.items():
        for name, v in r.items() if isinstance(r, dict) else ():
            errs = (
                v.get("errors")
                if isinstance(v, dict)
                else (v if name in ("errors", "error_samples") else None)
            )
            if isinstance(errs, list) and errs:
                out.append(f"{key} {name}: {len(errs)} error(s), e.g. {errs[0]}")
    return out


def render_markdown(results: dict[str, Any], before: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    head = _header(before)
    lines = [
        f"Measured {meta['date']} on {meta['machine']} with `{meta['command']}` ({meta['seconds']} s).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(c.strip() for c in cells) + " |" for cells in _lines(results, before)),
    ]
    problems = _problems(results)
    lines += ["", "Errors under load: " + ("none" if not problems else "; ".join(problems))]
    lines += [
        "",
        "<details><summary>raw figures</summary>",
        "",
        "```json",
        _json(results),
        "```",
        "</details>",
    ]
    return "\n".join(lines)


def _json(results: dict[str, Any]) -> str:
    import json

    def trim(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: trim(x) for k, x in v.items() if k not in ("runs", "server_runs")}
        if isinstance(v, float):
            return round(v, 3)
        if isinstance(v, list) and len(v) > 6:
            return [trim(x) for x in v[:6]] + ["…"]
        return [trim(x) for x in v] if isinstance(v, list) else v

    return json.dumps(trim(results), indent=1, ensure_ascii=False)


def write_doc(path: Path, block: str) -> None:
    """Replace the figures between the markers; the prose around them is kept."""
    text = path.read_text() if path.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    pre, rest = text.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    path.write_text(f"{pre}{BEGIN}\n{block}\n{END}{post}")

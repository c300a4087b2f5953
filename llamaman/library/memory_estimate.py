"""Memory a llama-server launch will need, split between GPU and host, from GGUF metadata alone.

Placement follows llama.cpp's ``-ngl``: there are ``n_layers + 1`` slots (the repeating blocks and
the output layer), the highest N slots go to the GPU, so ``-ngl 1`` offloads only the output layer
and ``-ngl n_layers + 1`` (or -1) offloads everything. Token embeddings always stay on the host.
Each block's KV cache lives where the block lives.

Sliding-window layers keep only ``n_swa + n_ubatch`` cells (rounded up to 256) when the
architecture's layer pattern is known, as llama.cpp sizes them; otherwise they count as full-context
layers. The compute buffer follows the feed-forward and embedding widths of one micro-batch, at twice
what the graph's largest tensors need, and the numbers exclude the backend's own context (a few
hundred MiB on CUDA), so they err on the high side. Checked against llama-server's own buffer report
on gemma-3-270m (tests/scheduling/test_footprint_real.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llamaman.library.gguf_meta import GGUFInfo, LibraryError

KV_BYTES_PER_ELEMENT: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 1.0625,
    "q4_0": 0.5625,
    "q4_1": 0.625,
    "q5_0": 0.6875,
    "q5_1": 0.75,
    "iq4_nl": 0.5625,
}

# llama-server's default micro-batch; the compute buffer scales with it.
COMPUTE_UBATCH = 512
# Context used when neither the launch nor the file names one (llama.cpp's historical default).
FALLBACK_CTX = 4096
# Sliding-window layer patterns llama.cpp hard-codes per architecture: of every N layers, the
# first N - 1 use the window and the last attends to the whole context.
SWA_PATTERNS: dict[str, int] = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "gpt-oss": 2}


@dataclass
class MemoryEstimate:
    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int
    gpu_bytes: int
    cpu_bytes: int
    total_bytes: int
    n_layers: int
    gpu_layers: int  # repeating blocks on the GPU (the output layer is not counted here)
    output_on_gpu: bool
    ctx_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bytes_per_element(cache_type: str) -> float:
    try:
        return KV_BYTES_PER_ELEMENT[cache_type.lower()]
    except KeyError:
        known = ", ".join(KV_BYTES_PER_ELEMENT)
        raise LibraryError(f"unknown KV cache type '{cache_type}' (expected one of: {known})") from None


def estimate_memory(
    entry: Any,
    ctx_size: int,
    n_gpu_layers: int,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    parallel: int = 1,
) -> MemoryEstimate:
    """Estimate memory for launching ``entry`` (a ModelEntry or a GGUFInfo).

    ``ctx_size`` <= 0 means the model's trained context, as llama-server's ``-c 0``. The KV cache
    holds ``ctx_size`` cells in total however many slots share it; ``parallel`` only scales the
    host-side logits buffer.
    """
    info: GGUFInfo | None = entry if isinstance(entry, GGUFInfo) else getattr(entry, "info", None)
    if info is None:
        raise LibraryError("no GGUF metadata to estimate memory from")
    bpe_k = _bytes_per_element(cache_type_k)
    bpe_v = _bytes_per_element(cache_type_v)
    n_layers = info.block_count or len(info.layer_bytes)
    ctx = ctx_size if ctx_size > 0 else (info.context_length or FALLBACK_CTX)

    slots = n_layers + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layers + 1)
    gpu_layers = max(slots - 1, 0)
    output_on_gpu = slots >= 1
    first_gpu_layer = n_layers - gpu_layers

    layer_bytes = list(info.layer_bytes[:n_layers]) + [0] * max(n_layers - len(info.layer_bytes), 0)
    input_bytes, output_bytes = info.input_bytes, info.output_bytes
    if not any(layer_bytes) and not input_bytes and not output_bytes:
        # No tensor directory to go by: spread the weights evenly over all slots.
        share = info.tensor_bytes // (n_layers + 1)
        layer_bytes, output_bytes = [share] * n_layers, info.tensor_bytes - share * n_layers

    head_count = info.head_count or 1
    k_len = info.key_length or (info.embedding_length or 0) // head_count
    v_len = info.value_length or (info.embedding_length or 0) // head_count
    kv_heads = info.head_count_kv_layers or [info.head_count_kv or info.head_count or 0] * n_layers
    kv_heads = kv_heads[:n_layers] + [0] * max(n_layers - len(kv_heads), 0)
    cells = _kv_cells(info, n_layers, ctx, parallel)
    kv_layer = [round(c * h * (k_len * bpe_k + v_len * bpe_v)) for c, h in zip(cells, kv_heads, strict=True)]

    gpu = cpu = 0
    for i in range(n_layers):
        if i >= first_gpu_layer:
            gpu += layer_bytes[i] + kv_layer[i]
        else:
            cpu += layer_bytes[i] + kv_layer[i]
    weights = sum(layer_bytes) + input_bytes + output_bytes
    cpu += input_bytes
    if output_on_gpu:
        gpu += output_bytes
        if info.output_tied:
            # The output layer reuses token_embd; llama.cpp gives the GPU its own copy.
            gpu += input_bytes
            weights += input_bytes
    else:
        cpu += output_bytes

    vocab = info.vocab_size or 0
    embd = info.embedding_length or 0
    compute = 8 * COMPUTE_UBATCH * (2 * _ff_length(info, embd) + 4 * embd)
    logits = 4 * vocab * max(parallel, 1)
    if slots > 0:
        gpu += compute
    else:
        cpu += compute
    cpu += logits

    kv = sum(kv_layer)
    return MemoryEstimate(
        weights_bytes=weights,
        kv_bytes=kv,
        overhead_bytes=compute + logits,
        gpu_bytes=gpu,
        cpu_bytes=cpu,
        total_bytes=gpu + cpu,
        n_layers=n_layers,
        gpu_layers=gpu_layers,
        output_on_gpu=output_on_gpu,
        ctx_size=ctx,
    )


def _meta(info: GGUFInfo, key: str) -> Any:
    arch = info.architecture
    return info.metadata.get(f"{arch}.{key}") if arch else None


def _ff_length(info: GGUFInfo, embd: int) -> int:
    ff = _meta(info, "feed_forward_length")
    if isinstance(ff, list):
        ff = max((int(x) for x in ff), default=0)
    return int(ff) if isinstance(ff, int | float) and ff > 0 else 4 * embd


def _kv_cells(info: GGUFInfo, n_layers: int, ctx: int, parallel: int) -> list[int]:
    """KV cells per layer: the whole context, or the window for sliding-window layers."""
    window = _meta(info, "attention.sliding_window")
    pattern = _meta(info, "attention.sliding_window_pattern")
    if not isinstance(pattern, int):
        pattern = SWA_PATTERNS.get(info.architecture or "")
    if not isinstance(window, int) or window <= 0 or not pattern or pattern < 2:
        return [ctx] * n_layers
    # llama.cpp: n_swa per sequence plus one micro-batch, padded to 256 cells, never above the context.
    swa = min(ctx, -(-(window * max(parallel, 1) + COMPUTE_UBATCH) // 256) * 256)
    return [swa if i % pattern < pattern - 1 else ctx for i in range(n_layers)]

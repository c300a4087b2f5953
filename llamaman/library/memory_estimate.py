"""Memory a llama-server launch will need, split between GPU and host, from GGUF metadata alone.

Placement follows llama.cpp's ``-ngl``: there are ``n_layers + 1`` slots (the repeating blocks and
the output layer), the highest N slots go to the GPU, so ``-ngl 1`` offloads only the output layer
and ``-ngl n_layers + 1`` (or -1) offloads everything. Token embeddings always stay on the host.
Each block's KV cache lives where the block lives.

The numbers exclude the backend's own context (a few hundred MiB on CUDA) and treat sliding-window
layers as full-context ones, so they err on the high side.
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
    kv_layer = [round(ctx * h * (k_len * bpe_k + v_len * bpe_v)) for h in kv_heads]

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
    compute = 4 * COMPUTE_UBATCH * (vocab + 4 * (info.embedding_length or 0))
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

"""What one model costs in memory for its launch settings, in a form placement can slice.

The estimate comes from the GGUF metadata (``library/memory_estimate.py``); after a load the
measured size replaces it (``calibrated``), so later decisions use what the server really took.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from llamaman.library.memory_estimate import estimate_memory

# What a llama-server process takes beyond its buffers (code, libraries, the HTTP server): measured
# as the RSS of a server holding a model of a few hundred KiB.
PROCESS_BASE_BYTES = 48 * 1024**2


@dataclass(frozen=True)
class Footprint:
    """Bytes a model needs: all on the host, or offloaded (``gpu_full`` on GPUs + ``host_full``)."""

    cpu_only: int
    gpu_full: int
    host_full: int
    slots: int = 1  # offloadable slots (repeating blocks + the output layer), as -ngl counts them
    measured: bool = False

    def partial(self, layers: int) -> tuple[int, int]:
        """(GPU bytes, host bytes) with ``layers`` of ``slots`` on the GPU, interpolated linearly."""
        k = max(0, min(layers, self.slots))
        if k == self.slots:
            return self.gpu_full, self.host_full
        gpu = self.gpu_full * k // self.slots
        host = self.host_full + (self.cpu_only - self.host_full) * (self.slots - k) // self.slots
        return gpu, host

    def calibrated(self, *, host: int | None = None, gpu: int | None = None) -> Footprint:
        """The same footprint with measured sizes in place of the estimate."""
        out = self
        if host is not None and host > 0:
            # On the host alone the measurement is the whole; offloaded, the host part shrinks by
            # the same factor the estimate was off by.
            scale = host / max(self.cpu_only, 1)
            out = replace(out, cpu_only=host, host_full=int(self.host_full * scale))
        if gpu is not None and gpu > 0:
            out = replace(out, gpu_full=gpu)
        return replace(out, measured=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_only": self.cpu_only,
            "gpu_full": self.gpu_full,
            "host_full": self.host_full,
            "slots": self.slots,
            "measured": self.measured,
        }


def estimate_footprint(
    info: Any,
    *,
    ctx_size: int,
    parallel: int = 1,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
) -> Footprint:
    """A model's footprint from its GGUF metadata (a ``GGUFInfo`` or a ``ModelEntry``)."""
    host_only = estimate_memory(info, ctx_size, 0, cache_type_k, cache_type_v, parallel)
    offloaded = estimate_memory(info, ctx_size, -1, cache_type_k, cache_type_v, parallel)
    return Footprint(
        cpu_only=host_only.total_bytes + PROCESS_BASE_BYTES,
        gpu_full=offloaded.gpu_bytes,
        host_full=offloaded.cpu_bytes + PROCESS_BASE_BYTES,
        slots=offloaded.n_layers + 1,
    )


def flat_footprint(size: int) -> Footprint:
    """A footprint with no metadata to go by: the file size, on the host or on one GPU."""
    return Footprint(cpu_only=size + PROCESS_BASE_BYTES, gpu_full=size, host_full=PROCESS_BASE_BYTES)


def settings_key(model_path: str, settings: Any) -> str:
    """The launch settings a footprint depends on, as one string (remembered per model + settings)."""
    extra = str(getattr(settings, "extra_args", "") or "")
    return "|".join(
        str(x)
        for x in (
            model_path,
            getattr(settings, "ctx_size", 0),
            getattr(settings, "parallel", 1),
            getattr(settings, "n_gpu_layers", -1),
            getattr(settings, "gpu_devices", None) or "",
            extra,
        )
    )[:512]

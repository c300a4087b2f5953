"""GGUF metadata: a header-only reader and the model facts the library shows and plans launches with.

``gguf.GGUFReader`` builds a numpy view per array element, so a real 150k-token vocabulary costs it
over ten seconds per file. This reader walks the same header with ``struct`` and skips long arrays
without materialising them; types and block sizes come from the gguf package (``gguf_types``).
Only the header is read (a few MB at most); tensor data is never touched.
"""

from __future__ import annotations

import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from llamaman.core.errors import Invalid, NotFound
from llamaman.library.gguf_types import (
    GGML_QUANT_SIZES,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFValueType,
    LlamaFileType,
    float32_value,
)


class LibraryError(Invalid, ValueError):
    """A user-facing problem with a model path or file; the message is shown as is."""


class NotInLibrary(NotFound, LibraryError):
    """A path that names no model file or folder."""


# Arrays longer than this (token lists, merges, scores) are summarised as None, as Ollama's
# /api/show does, and only their length is kept.
MAX_ARRAY_ITEMS = 64

# Encoder-only architectures llama-server can only serve with --embedding.
EMBEDDING_ARCHS = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert", "modern-bert"}
)

_SCALAR_FORMATS: dict[int, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")
_INPUT_PREFIXES = ("token_embd.", "token_types.", "pos_embd.")
_MAX_DIMS = 8
_FIRST_READ = 1 << 20


@dataclass
class TensorInfo:
    name: str
    type_id: int
    n_elements: int
    offset: int  # relative to the data section
    n_bytes: int | None  # None for a type newer than the installed gguf package


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int]
    tensors: list[TensorInfo]
    data_start: int
    file_size: int


class _Cursor:
    """Sequential reads over the start of a file, pulling in more bytes only as the header needs."""

    def __init__(self, fh: BinaryIO, file_size: int, endian: str) -> None:
        self.fh = fh
        self.size = file_size
        self.buf = bytearray()
        self.off = 0
        self.structs = {t: struct.Struct(endian + f) for t, f in _SCALAR_FORMATS.items()}

    def _fill(self, end: int) -> None:
        if end > self.size:
            raise LibraryError("truncated GGUF file (header ends early)")
        want = min(max(end, 2 * len(self.buf), _FIRST_READ), self.size) - len(self.buf)
        chunk = self.fh.read(want)
        self.buf += chunk
        if len(self.buf) < end:  # the file shrank while we were reading it
            raise LibraryError("truncated GGUF file (header ends early)")

    def _take(self, n: int) -> int:
        start = self.off
        if start + n > len(self.buf):
            self._fill(start + n)
        self.off = start + n
        return start

    def scalar(self, vtype: int) -> Any:
        st = self.structs[vtype]
        (value,) = st.unpack_from(self.buf, self._take(st.size))
        if vtype == GGUFValueType.FLOAT32:
            return float32_value(value)
        return value

    def string(self) -> str:
        n = self.scalar(GGUFValueType.UINT64)
        start = self._take(n)
        return self.buf[start : start + n].decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str, lengths: dict[str, int]) -> Any:
        if vtype in self.structs:
            return self.scalar(vtype)
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype != GGUFValueType.ARRAY:
            raise LibraryError(f"corrupt GGUF file (unknown value type {vtype} for {key})")
        itype = self.scalar(GGUFValueType.UINT32)
        count = self.scalar(GGUFValueType.UINT64)
        if count > self.size:
            raise LibraryError(f"corrupt GGUF file (array {key} claims {count} items)")
        if count <= MAX_ARRAY_ITEMS:
            return [self.value(itype, key, lengths) for _ in range(count)]
        lengths[key] = count
        self.skip(itype, count, key)
        return None

    def skip(self, itype: int, count: int, key: str) -> None:
        if itype in self.structs:
            self._take(self.structs[itype].size * count)
        elif itype == GGUFValueType.STRING:
            # The hot loop for vocabularies: only the length prefixes are decoded.
            unpack = self.structs[GGUFValueType.UINT64].unpack_from
            buf, off = self.buf, self.off
            for _ in range(count):
                if off + 8 > len(buf):
                    self._fill(off + 8)
                    buf = self.buf
                off += 8 + unpack(buf, off)[0]
            self.off = off
            if off > len(buf):
                self._fill(off)
        else:
            for _ in range(count):
                self.value(itype, key, {})


def read_header(path: Path) -> GGUFHeader:
    """Parse a GGUF header; raise LibraryError with a short message for anything unreadable.

    Plain reads rather than mmap: a file truncated while mapped (a download being replaced) would
    kill the process with SIGBUS instead of raising.
    """
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise LibraryError("empty file")
            return _parse(fh, size)
    except LibraryError:
        raise
    except OSError as e:
        raise LibraryError(f"cannot read file: {e.strerror or e}") from e
    except (struct.error, ValueError, OverflowError, MemoryError) as e:
        raise LibraryError(f"corrupt GGUF file ({e})") from e


def _parse(fh: BinaryIO, file_size: int) -> GGUFHeader:
    head = fh.read(8)
    if len(head) < 8 or struct.unpack_from("<I", head, 0)[0] != GGUF_MAGIC:
        raise LibraryError("not a GGUF file (bad magic)")
    endian = "<"
    version = struct.unpack_from("<I", head, 4)[0]
    if version & 0xFFFF == 0:  # written on a big-endian host
        endian, version = ">", struct.unpack_from(">I", head, 4)[0]
    if version not in (2, 3):
        raise LibraryError(f"unsupported GGUF version {version}")
    cur = _Cursor(fh, file_size, endian)
    cur.buf += head
    cur.off = 8
    n_tensors = cur.scalar(GGUFValueType.UINT64)
    n_kv = cur.scalar(GGUFValueType.UINT64)
    if n_tensors > file_size or n_kv > file_size:
        raise LibraryError("corrupt GGUF file (impossible counts)")
    metadata: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar(GGUFValueType.UINT32), key, lengths)
    raw: list[tuple[str, int, int, int]] = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.scalar(GGUFValueType.UINT32)
        if n_dims > _MAX_DIMS:
            raise LibraryError(f"corrupt GGUF file (tensor {name} has {n_dims} dims)")
        n_elements = 1
        for _ in range(n_dims):
            n_elements *= cur.scalar(GGUFValueType.UINT64)
        type_id = cur.scalar(GGUFValueType.UINT32)
        raw.append((name, type_id, n_elements, cur.scalar(GGUFValueType.UINT64)))
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise LibraryError("corrupt GGUF file (bad alignment)")
    data_start = -(-cur.off // alignment) * alignment
    tensors = [TensorInfo(n, t, e, o, _tensor_bytes(t, e)) for n, t, e, o in raw]
    needed = max((data_start + t.offset + (t.n_bytes or 0) for t in tensors), default=cur.off)
    if needed > file_size:
        raise LibraryError(f"truncated GGUF file ({file_size:,} of {needed:,} bytes present)")
    return GGUFHeader(version, metadata, lengths, tensors, data_start, file_size)


def _tensor_bytes(type_id: int, n_elements: int) -> int | None:
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        return None
    return n_elements * size // block


def type_name(type_id: int) -> str:
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"TYPE_{type_id}"


def file_type_name(file_type: int | None) -> str | None:
    """llama.cpp's name for general.file_type (MOSTLY_Q4_K_M -> Q4_K_M), None when unknown."""
    if file_type is None:
        return None
    try:
        ft = LlamaFileType(file_type & ~LlamaFileType.GUESSED)
    except ValueError:
        return None
    return ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")


@dataclass
class GGUFInfo:
    architecture: str | None = None
    name: str | None = None
    size_label: str | None = None
    block_count: int | None = None
    context_length: int | None = None
    embedding_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    expert_count: int | None = None
    vocab_size: int | None = None
    pooling_type: int | None = None
    is_embedding: bool = False
    file_type: int | None = None
    quantization: str | None = None
    parameter_count: int = 0
    tensor_count: int = 0
    tensor_bytes: int = 0
    tensor_types: dict[str, int] = field(default_factory=dict)  # type name -> element count
    has_chat_template: bool = False
    chat_template: str | None = None
    has_tools: bool = False
    gguf_version: int = 3
    split_count: int = 1
    file_size: int = 0
    modified_at: float = 0.0
    # Kept for /api/show and the memory estimate; left out of to_dict() to keep listings small.
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    head_count_kv_layers: list[int] | None = field(default=None, repr=False)
    layer_bytes: list[int] = field(default_factory=list, repr=False)
    input_bytes: int = field(default=0, repr=False)
    output_bytes: int = field(default=0, repr=False)
    has_output_tensor: bool = field(default=False, repr=False)

    @property
    def parameter_size(self) -> str:
        """Ollama-style size ("8.0B", "135M"): the file's label, else derived from the count."""
        if self.size_label:
            return self.size_label
        n = self.parameter_count
        for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
            if n >= scale:
                return f"{n / scale:.1f}{suffix}" if suffix in "TB" else f"{round(n / scale)}{suffix}"
        return str(n)

    @property
    def output_tied(self) -> bool:
        """No output.weight: llama.cpp reuses token_embd and copies it to the output layer's device."""
        return not self.has_output_tensor and self.input_bytes > 0

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        skip = {
            "metadata",
            "head_count_kv_layers",
            "layer_bytes",
            "input_bytes",
            "output_bytes",
            "has_output_tensor",
        }
        if not full:
            skip.add("chat_template")
        d = {k: v for k, v in self.__dict__.items() if k not in skip}
        d["tensor_types"] = dict(self.tensor_types)
        d["parameter_size"] = self.parameter_size
        return d


def _int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return int(v)


def _per_layer(v: Any) -> tuple[int | None, list[int] | None]:
    # Hybrid models store per-layer head counts as arrays (0 for recurrent layers).
    if isinstance(v, list) and v and all(isinstance(x, int) for x in v):
        return max(v), list(v)
    return _int(v), None


def info_from_header(h: GGUFHeader, modified_at: float) -> GGUFInfo:
    md = h.metadata
    arch = md.get("general.architecture")
    arch = arch if isinstance(arch, str) else None

    def a(key: str) -> Any:
        return md.get(f"{arch}.{key}") if arch else None

    templates = {
        k: v for k, v in md.items() if k.startswith("tokenizer.chat_template") and isinstance(v, str)
    }
    template = templates.get("tokenizer.chat_template") or next(iter(templates.values()), None)
    head_count, _ = _per_layer(a("attention.head_count"))
    head_count_kv, kv_layers = _per_layer(a("attention.head_count_kv"))
    pooling = _int(a("pooling_type"))
    vocab = h.array_lengths.get("tokenizer.ggml.tokens")
    if vocab is None and isinstance(md.get("tokenizer.ggml.tokens"), list):
        vocab = len(md["tokenizer.ggml.tokens"])
    file_type = _int(md.get("general.file_type"))
    info = GGUFInfo(
        architecture=arch,
        name=md.get("general.name") if isinstance(md.get("general.name"), str) else None,
        size_label=md.get("general.size_label") if isinstance(md.get("general.size_label"), str) else None,
        block_count=_int(a("block_count")),
        context_length=_int(a("context_length")),
        embedding_length=_int(a("embedding_length")),
        head_count=head_count,
        head_count_kv=head_count_kv,
        key_length=_int(a("attention.key_length")),
        value_length=_int(a("attention.value_length")),
        expert_count=_int(a("expert_count")),
        vocab_size=vocab or _int(a("vocab_size")),
        pooling_type=pooling,
        is_embedding=bool(pooling) or arch in EMBEDDING_ARCHS,
        file_type=file_type,
        has_chat_template=template is not None,
        chat_template=template,
        has_tools=any("tools" in t for t in templates.values()),
        gguf_version=h.version,
        split_count=_int(md.get("split.count")) or 1,
        file_size=h.file_size,
        modified_at=modified_at,
        metadata=md,
        head_count_kv_layers=kv_layers,
    )
    _add_tensors(info, h)
    info.quantization = file_type_name(file_type) or _dominant_type(info.tensor_types)
    return info


def _add_tensors(info: GGUFInfo, h: GGUFHeader) -> None:
    # A type the gguf package does not know yet gets its size from the gap to the next tensor.
    ends = [*sorted(t.offset for t in h.tensors), h.file_size - h.data_start]
    types: Counter[str] = Counter()
    layers: dict[int, int] = {}
    for t in h.tensors:
        n_bytes = t.n_bytes
        if n_bytes is None:
            n_bytes = next((e for e in ends if e > t.offset), t.offset) - t.offset
        info.parameter_count += t.n_elements
        info.tensor_bytes += n_bytes
        if t.n_elements > 0:
            types[type_name(t.type_id)] += t.n_elements
        if m := _BLOCK_RE.match(t.name):
            layers[int(m.group(1))] = layers.get(int(m.group(1)), 0) + n_bytes
        elif t.name.startswith(_INPUT_PREFIXES):
            info.input_bytes += n_bytes
        else:
            info.has_output_tensor = info.has_output_tensor or t.name.startswith("output.")
            info.output_bytes += n_bytes
    info.tensor_count = len(h.tensors)
    info.tensor_types = dict(types.most_common())
    n_layers = max(info.block_count or 0, max(layers, default=-1) + 1)
    info.layer_bytes = [layers.get(i, 0) for i in range(n_layers)]


def _dominant_type(types: dict[str, int]) -> str | None:
    # Norms and biases are F32 in every quantization; prefer the type of the big matrices.
    quant = {k: v for k, v in types.items() if k != "F32"} or types
    return max(quant, key=lambda k: quant[k]) if quant else None


def merge_parts(parts: list[GGUFInfo]) -> GGUFInfo:
    """Combine the infos of a split model's parts; metadata lives in the first part."""
    first = parts[0]
    merged = GGUFInfo(**{**first.__dict__, "tensor_types": {}, "layer_bytes": []})
    merged.parameter_count = sum(p.parameter_count for p in parts)
    merged.tensor_count = sum(p.tensor_count for p in parts)
    merged.tensor_bytes = sum(p.tensor_bytes for p in parts)
    merged.file_size = sum(p.file_size for p in parts)
    merged.modified_at = max(p.modified_at for p in parts)
    merged.input_bytes = sum(p.input_bytes for p in parts)
    merged.output_bytes = sum(p.output_bytes for p in parts)
    types: Counter[str] = Counter()
    n_layers = max(len(p.layer_bytes) for p in parts)
    layer_bytes = [0] * n_layers
    for p in parts:
        types.update(p.tensor_types)
        for i, b in enumerate(p.layer_bytes):
            layer_bytes[i] += b
    merged.tensor_types = dict(types.most_common())
    merged.layer_bytes = layer_bytes
    merged.has_output_tensor = any(p.has_output_tensor for p in parts)
    merged.quantization = file_type_name(first.file_type) or _dominant_type(merged.tensor_types)
    return merged

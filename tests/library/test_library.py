"""Model library: scanning, GGUF metadata, lookup, path safety, deletion and memory estimates."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from llamaman.library.catalog import LibraryError, ModelLibrary, estimate_memory
from llamaman.library.gguf_meta import read_header

N_EMBD = 64
VOCAB = 100  # above the 64-item cut-off, so the token list is summarised


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    n_layers: int = 4,
    ctx: int = 2048,
    n_head: int = 4,
    n_head_kv: int = 2,
    file_type: int | None = gguf.LlamaFileType.MOSTLY_Q4_K_M,
    chat_template: str | None = None,
    pooling: int | None = None,
    tied_output: bool = False,
    dtype: Any = np.float32,
    layers: range | None = None,
    metadata: bool = True,
    split: tuple[int, int] | None = None,
) -> Path:
    """A tiny but well-formed GGUF: per block a norm and a 16x64 matrix, plus embeddings/output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)
    if metadata:
        w.add_name(path.stem)
        w.add_block_count(n_layers)
        w.add_context_length(ctx)
        w.add_embedding_length(N_EMBD)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        if file_type is not None:
            w.add_file_type(file_type)
        if chat_template is not None:
            w.add_chat_template(chat_template)
        if pooling is not None:
            w.add_pooling_type(gguf.PoolingType(pooling))
        w.add_token_list([f"t{i}" for i in range(VOCAB)])
    if split is not None:
        w.add_uint16("split.no", split[0])
        w.add_uint16("split.count", split[1])
    for i in layers if layers is not None else range(n_layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_down.weight", np.ones((16, N_EMBD), dtype=dtype))
    if metadata:
        w.add_tensor("token_embd.weight", np.ones((VOCAB, N_EMBD), dtype=np.float32))
        w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        if not tied_output:
            w.add_tensor("output.weight", np.ones((VOCAB, N_EMBD), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_split(folder: Path, stem: str, n_parts: int = 3, n_layers: int = 6) -> list[Path]:
    per = n_layers // n_parts
    paths = []
    for no in range(1, n_parts + 1):
        p = folder / f"{stem}-{no:05d}-of-{n_parts:05d}.gguf"
        write_gguf(
            p,
            n_layers=n_layers,
            layers=range((no - 1) * per, no * per),
            metadata=no == 1,
            split=(no - 1, n_parts),
        )
        paths.append(p)
    return paths


def truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    return root


def test_multipart_model_is_one_entry_with_summed_size(models: Path) -> None:
    parts = write_split(models / "big", "Big-Model-Q4_K_M")
    lib = ModelLibrary(models)
    entries = lib.scan()
    assert [e.name for e in entries] == ["Big-Model-Q4_K_M"]
    e = entries[0]
    assert e.error is None and e.launchable
    assert e.path == models / "big" / parts[0].name
    assert e.rel_path == "big/Big-Model-Q4_K_M-00001-of-00003.gguf"
    assert e.parts == [f"big/{p.name}" for p in parts]
    assert e.size_bytes == sum(p.stat().st_size for p in parts)
    assert e.info is not None
    assert e.info.block_count == 6 and len(e.info.layer_bytes) == 6
    per_block = N_EMBD + 16 * N_EMBD
    assert e.info.parameter_count == 6 * per_block + 2 * VOCAB * N_EMBD + N_EMBD


def test_missing_part_is_reported(models: Path) -> None:
    parts = write_split(models, "split")
    parts[1].unlink()
    [e] = ModelLibrary(models).scan()
    assert e.error == "missing part 2 of 3"
    assert not e.launchable


def test_corrupt_files_are_listed_with_errors(models: Path) -> None:
    write_gguf(models / "good.gguf")
    header_cut = write_gguf(models / "header-cut.gguf")
    truncate(header_cut, 200)
    data_cut = write_gguf(models / "data-cut.gguf")
    truncate(data_cut, data_cut.stat().st_size - 100)
    (models / "garbage.gguf").write_bytes(b"not a model at all, just text" * 10)
    (models / "empty.gguf").write_bytes(b"")
    by_name = {e.name: e for e in ModelLibrary(models).scan()}
    assert set(by_name) == {"good", "header-cut", "data-cut", "garbage", "empty"}
    assert by_name["good"].error is None and by_name["good"].launchable
    assert by_name["header-cut"].error == "truncated GGUF file (header ends early)"
    assert by_name["data-cut"].error is not None and by_name["data-cut"].error.startswith(
        "truncated GGUF file ("
    )
    assert by_name["garbage"].error == "not a GGUF file (bad magic)"
    assert by_name["empty"].error == "empty file"
    for name in ("header-cut", "data-cut", "garbage", "empty"):
        assert not by_name[name].launchable
        json.dumps(by_name[name].to_dict())


def test_metadata_fields(models: Path) -> None:
    template = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}{{ tools }}{% endif %}"
    write_gguf(models / "chat.gguf", ctx=8192, chat_template=template)
    write_gguf(models / "plain.gguf", file_type=None, dtype=np.float16)
    lib = ModelLibrary(models)
    lib.scan()
    chat = lib.find("chat")
    assert chat is not None and chat.info is not None
    info = chat.info
    assert (info.architecture, info.name, info.block_count, info.context_length) == ("llama", "chat", 4, 8192)
    assert (info.embedding_length, info.head_count, info.head_count_kv) == (N_EMBD, 4, 2)
    assert info.quantization == "Q4_K_M" and info.vocab_size == VOCAB
    assert info.has_chat_template and info.chat_template == template and info.has_tools
    assert chat.capabilities == ["completion", "tools"]
    assert info.file_size == chat.size_bytes and info.modified_at == pytest.approx(chat.modified_at)
    plain = lib.find("plain")
    assert plain is not None and plain.info is not None
    # No general.file_type: the most common non-F32 tensor type names the quantization.
    assert plain.info.quantization == "F16"
    assert not plain.info.has_chat_template and plain.capabilities == ["completion"]
    listed = chat.to_dict()
    assert "chat_template" not in listed["info"] and listed["info"]["parameter_size"]
    assert chat.info.to_dict(full=True)["chat_template"] == template
    json.dumps([e.to_dict() for e in lib.models])


def test_layers_equals_block_count(models: Path) -> None:
    write_gguf(models / "a" / "m.gguf", n_layers=7)
    write_split(models, "s", n_layers=9)
    lib = ModelLibrary(models)
    lib.scan()
    assert lib.layers("a/m.gguf") == 7
    assert lib.layers(str(models / "a" / "m.gguf")) == 7
    assert lib.layers("s-00001-of-00003.gguf") == 9
    assert lib.layers("m") == 7  # a bare name falls back to lookup
    with pytest.raises(LibraryError):
        lib.layers("nope.gguf")
    with pytest.raises(LibraryError):
        lib.layers("../m.gguf")


def test_mmproj_in_folder_gives_vision(models: Path) -> None:
    write_gguf(models / "vl" / "Qwen-VL-Q4_K_M.gguf")
    write_gguf(models / "vl" / "mmproj-Qwen-VL-f32.gguf", arch="clip", file_type=None)
    write_gguf(models / "vl" / "mmproj-Qwen-VL-f16.gguf", arch="clip", file_type=None)
    # In the root, a projector beside several unrelated models belongs to none of them.
    write_gguf(models / "one.gguf")
    write_gguf(models / "two.gguf")
    write_gguf(models / "mmproj-stray.gguf", arch="clip")
    entries = ModelLibrary(models).scan()
    assert [e.name for e in entries] == ["one", "Qwen-VL-Q4_K_M", "two"]
    vl = entries[1]
    assert vl.mmproj == "vl/mmproj-Qwen-VL-f16.gguf"
    assert vl.capabilities == ["completion", "vision"]
    assert entries[0].mmproj is None and "vision" not in entries[0].capabilities


def test_embedding_models(models: Path) -> None:
    write_gguf(models / "pooled.gguf", arch="qwen3", pooling=gguf.PoolingType.LAST)
    write_gguf(models / "bert.gguf", arch="bert")
    write_gguf(models / "gen.gguf", pooling=gguf.PoolingType.NONE)
    lib = ModelLibrary(models)
    lib.scan()
    for name in ("pooled", "bert"):
        e = lib.find(name)
        assert e is not None and e.info is not None
        assert e.info.is_embedding and e.capabilities == ["embedding"]
    gen = lib.find("gen")
    assert gen is not None and gen.capabilities == ["completion"]


def test_find(models: Path) -> None:
    write_gguf(models / "org" / "Llama-3-8B.Q4_K_M.gguf")
    write_gguf(models / "Foo.gguf")
    write_gguf(models / "foo.gguf")
    lib = ModelLibrary(models)
    lib.scan()
    llama = lib.find("Llama-3-8B.Q4_K_M")
    assert llama is not None and llama.rel_path == "org/Llama-3-8B.Q4_K_M.gguf"
    for query in (
        "org/Llama-3-8B.Q4_K_M.gguf",
        "org/Llama-3-8B.Q4_K_M",
        "Llama-3-8B.Q4_K_M:latest",
        "org/Llama-3-8B.Q4_K_M.gguf:latest",
        "llama-3-8b.q4_k_m",
        str(llama.path),
    ):
        assert lib.find(query) is llama, query
    foo_upper, foo_lower = lib.find("Foo"), lib.find("foo")
    assert foo_upper is not None and foo_upper.rel_path == "Foo.gguf"
    assert foo_lower is not None and foo_lower.rel_path == "foo.gguf"
    assert lib.find("foo:latest") is foo_lower
    write_split(models / "org", "Split-Q8_0")
    lib.scan()
    split = lib.find("org/Split-Q8_0:latest")
    assert split is not None and split.rel_path == "org/Split-Q8_0-00001-of-00003.gguf"
    assert lib.find("FOO") in (foo_upper, foo_lower)
    assert lib.find("missing") is None and lib.find("") is None
    # An HF folder sharing a GGUF's name never shadows the launchable model.
    hf = models / "a" / "Foo"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"0")
    lib.scan()
    foo = lib.find("Foo")
    assert foo is not None and foo.kind == "gguf"


def test_long_vocabulary_is_read_quickly(models: Path) -> None:
    # gguf.GGUFReader needs ~10 s for a 150k vocabulary; skipping the arrays keeps a scan cheap.
    path = models / "vocab.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_token_list([f"token-{i}" for i in range(100_000)])
    w.add_token_scores([0.0] * 100_000)
    w.add_token_merges([f"a{i} b{i}" for i in range(100_000)])
    w.add_tensor("a", np.ones(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    lib = ModelLibrary(models)
    started = time.perf_counter()
    [e] = lib.scan()
    assert time.perf_counter() - started < 2.0
    assert e.info is not None and e.info.vocab_size == 100_000
    assert lib.model_info_kv(e)["tokenizer.ggml.merges"] is None


def test_safe_path(models: Path, tmp_path: Path) -> None:
    write_gguf(models / "sub" / "m.gguf")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.gguf").write_bytes(b"x")
    (models / "escape.gguf").symlink_to(outside / "secret.gguf")
    (models / "escape-dir").symlink_to(outside, target_is_directory=True)
    (models / "alias.gguf").symlink_to(models / "sub" / "m.gguf")
    lib = ModelLibrary(models)
    assert lib.safe_path("sub/m.gguf") == models / "sub" / "m.gguf"
    assert lib.safe_path(str(models / "sub" / "m.gguf")) == models / "sub" / "m.gguf"
    # A link that stays inside is kept as named: llama.cpp derives split-part names from it.
    assert lib.safe_path("alias.gguf") == models / "alias.gguf"
    for bad in ("../x", "sub/../../x", "/etc/passwd", "escape.gguf", "escape-dir/secret.gguf", "", "   "):
        with pytest.raises(LibraryError):
            lib.safe_path(bad)
    with pytest.raises(ValueError, match="outside the models folder"):
        lib.safe_path("/etc/passwd")
    # The scan lists the escaping link but never launches it.
    escape = next(e for e in lib.scan() if e.name == "escape")
    assert escape.error == "links outside the models folder" and not escape.launchable


def test_models_dir_behind_a_symlink_or_relative(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_gguf(models / "sub" / "m.gguf")
    link = tmp_path / "link"
    link.symlink_to(models, target_is_directory=True)
    lib = ModelLibrary(link)
    [e] = lib.scan()
    # Paths stay spelled under the configured folder so callers can relative_to() them.
    assert e.path == link / "sub" / "m.gguf" and e.rel_path == "sub/m.gguf"
    assert lib.safe_path(str(models / "sub" / "m.gguf")) == link / "sub" / "m.gguf"
    assert lib.safe_path("sub/m.gguf").relative_to(lib.models_dir).as_posix() == "sub/m.gguf"
    monkeypatch.chdir(tmp_path)
    rel = ModelLibrary(Path("models"))
    assert rel.models_dir == models and [x.rel_path for x in rel.scan()] == ["sub/m.gguf"]


def test_delete_removes_all_parts(models: Path) -> None:
    parts = write_split(models / "big", "big")
    write_gguf(models / "keep.gguf")
    lib = ModelLibrary(models)
    lib.scan()
    removed = lib.delete("big/big-00001-of-00003.gguf")
    assert removed == [f"big/{p.name}" for p in parts]
    assert not any(p.exists() for p in parts)
    assert [e.name for e in lib.models] == ["keep"]
    assert (models / "keep.gguf").exists()
    with pytest.raises(LibraryError):
        lib.delete("big/big-00001-of-00003.gguf")
    with pytest.raises(LibraryError):
        lib.delete("../keep.gguf")
    with pytest.raises(LibraryError):
        lib.delete(".")


def test_delete_projector_only_when_folder_has_no_other_model(models: Path) -> None:
    write_gguf(models / "solo" / "vis.gguf")
    write_gguf(models / "solo" / "mmproj-vis-f16.gguf", arch="clip")
    write_gguf(models / "pair" / "a.gguf")
    write_gguf(models / "pair" / "b.gguf")
    write_gguf(models / "pair" / "mmproj-f16.gguf", arch="clip")
    lib = ModelLibrary(models)
    lib.scan()
    assert lib.delete("solo/vis.gguf") == ["solo/vis.gguf", "solo/mmproj-vis-f16.gguf"]
    assert not (models / "solo").exists()
    assert lib.delete("pair/a.gguf") == ["pair/a.gguf"]
    assert (models / "pair" / "mmproj-f16.gguf").exists()
    b = lib.find("b")
    assert b is not None and b.mmproj == "pair/mmproj-f16.gguf"


def test_hf_folder(models: Path) -> None:
    repo = models / "Qwen2-0.5B"
    repo.mkdir()
    (repo / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "num_hidden_layers": 24,
                "max_position_embeddings": 32768,
                "torch_dtype": "bfloat16",
            }
        )
    )
    (repo / "model.safetensors").write_bytes(b"\0" * 1000)
    lib = ModelLibrary(models)
    [e] = lib.scan()
    assert (e.kind, e.name, e.rel_path, e.launchable) == ("hf", "Qwen2-0.5B", "Qwen2-0.5B", False)
    assert e.hf is not None and e.hf.architectures == ["Qwen2ForCausalLM"]
    assert (e.hf.num_hidden_layers, e.hf.max_position_embeddings) == (24, 32768)
    assert e.size_bytes == 1000 + (repo / "config.json").stat().st_size
    assert lib.layers("Qwen2-0.5B") == 24
    json.dumps(e.to_dict())
    assert lib.delete("Qwen2-0.5B") == ["Qwen2-0.5B"] and not repo.exists()


def test_model_info_kv(models: Path) -> None:
    write_gguf(models / "m.gguf", chat_template="{{ x }}")
    lib = ModelLibrary(models)
    [e] = lib.scan()
    kv = lib.model_info_kv(e)
    assert kv["general.architecture"] == "llama"
    assert kv["llama.block_count"] == 4 and kv["llama.attention.head_count_kv"] == 2
    assert kv["tokenizer.ggml.tokens"] is None  # 100 tokens: summarised like Ollama does
    assert kv["general.parameter_count"] == e.info.parameter_count if e.info else False
    json.dumps(kv)


# Hand-computed sizes for write_gguf's defaults (4 blocks, n_embd 64, 4 heads, 2 KV heads, vocab 100):
BLOCK = 64 * 4 + 16 * 64 * 4  # attn_norm + ffn_down, f32 = 4352
EMBD = 100 * 64 * 4  # token_embd = 25600, stays on the host
OUTPUT = 64 * 4 + 100 * 64 * 4  # output_norm + output = 25856
KV_F16_LAYER = 1024 * 2 * (16 * 2 + 16 * 2)  # ctx 1024 * 2 KV heads * (K 16 dims + V 16 dims) * 2 B = 131072
# Twice one micro-batch's feed-forward (no length in the file: 4 * n_embd) and embedding widths.
COMPUTE = 8 * 512 * (2 * 4 * 64 + 4 * 64)  # 3145728
LOGITS = 4 * 100  # one slot


def test_memory_estimate_full_offload(models: Path) -> None:
    write_gguf(models / "m.gguf")
    [e] = ModelLibrary(models).scan()
    est = estimate_memory(e, ctx_size=1024, n_gpu_layers=-1)
    assert est.n_layers == 4 and est.gpu_layers == 4 and est.output_on_gpu
    assert est.kv_bytes == 4 * KV_F16_LAYER == 2 * 4 * 1024 * 2 * 16 * 2
    assert est.weights_bytes == 4 * BLOCK + EMBD + OUTPUT
    assert est.overhead_bytes == COMPUTE + LOGITS
    assert est.gpu_bytes == 4 * (BLOCK + KV_F16_LAYER) + OUTPUT + COMPUTE
    assert est.cpu_bytes == EMBD + LOGITS
    assert (
        est.total_bytes
        == est.weights_bytes + est.kv_bytes + est.overhead_bytes
        == est.gpu_bytes + est.cpu_bytes
    )
    assert estimate_memory(e, 1024, 5).to_dict() == est.to_dict()  # n_layers + 1 is everything
    assert estimate_memory(e, 1024, 99).gpu_bytes == est.gpu_bytes


def test_memory_estimate_partial_and_cpu(models: Path) -> None:
    write_gguf(models / "m.gguf")
    [e] = ModelLibrary(models).scan()
    # -ngl 3: the output layer plus the two highest blocks.
    part = estimate_memory(e, 1024, 3)
    assert (part.gpu_layers, part.output_on_gpu) == (2, True)
    assert part.gpu_bytes == 2 * (BLOCK + KV_F16_LAYER) + OUTPUT + COMPUTE
    assert part.cpu_bytes == 2 * (BLOCK + KV_F16_LAYER) + EMBD + LOGITS
    # -ngl 1 offloads only the output layer.
    one = estimate_memory(e, 1024, 1)
    assert (one.gpu_layers, one.output_on_gpu, one.gpu_bytes) == (0, True, OUTPUT + COMPUTE)
    cpu = estimate_memory(e, 1024, 0, parallel=4)
    assert cpu.gpu_bytes == 0 and not cpu.output_on_gpu
    assert (
        cpu.cpu_bytes == cpu.total_bytes == 4 * (BLOCK + KV_F16_LAYER) + EMBD + OUTPUT + COMPUTE + 4 * LOGITS
    )


def test_memory_estimate_quantized_cache_and_defaults(models: Path) -> None:
    write_gguf(models / "m.gguf", ctx=2048)
    write_gguf(models / "tied.gguf", tied_output=True)
    lib = ModelLibrary(models)
    lib.scan()
    m, tied = lib.find("m"), lib.find("tied")
    est = estimate_memory(m, 1024, -1, cache_type_k="q8_0", cache_type_v="q4_0")
    assert est.kv_bytes == 4 * 1024 * 2 * (16 * 1.0625 + 16 * 0.5625) == 4 * 53248
    # ctx 0 means the trained context, as llama-server's -c 0.
    assert estimate_memory(m, 0, -1).kv_bytes == 4 * 2048 * 2 * (16 + 16) * 2
    with pytest.raises(LibraryError, match="unknown KV cache type"):
        estimate_memory(m, 1024, -1, cache_type_k="q3_k")
    # Tied embeddings: the GPU holds its own copy of token_embd for the output layer.
    t = estimate_memory(tied, 1024, -1)
    assert t.gpu_bytes == 4 * (BLOCK + KV_F16_LAYER) + (OUTPUT - 100 * 64 * 4) + EMBD + COMPUTE
    assert t.weights_bytes == 4 * BLOCK + EMBD + (OUTPUT - 100 * 64 * 4) + EMBD


def test_rescan_hits_cache(models: Path) -> None:
    template = write_gguf(models / "template.gguf")
    data = template.read_bytes()
    template.unlink()
    for i in range(100):
        target = models / f"group{i % 10}" / f"model-{i:03d}.gguf"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(data)
    bad = models / "broken.gguf"
    bad.write_bytes(data[:300])
    lib = ModelLibrary(models)
    assert len(lib.scan()) == 101 and lib.file_reads == 101
    again = lib.scan()
    assert len(again) == 101 and lib.file_reads == 101  # nothing re-read, failures included
    assert next(e for e in again if e.name == "broken").error is not None
    changed = models / "group3" / "model-003.gguf"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 1_000_000_000))
    lib.scan()
    assert lib.file_reads == 102


async def test_ascan(models: Path) -> None:
    write_gguf(models / "m.gguf")
    lib = ModelLibrary(models)
    entries = await lib.ascan()
    assert [e.name for e in entries] == ["m"] and lib.models == entries


def test_missing_models_dir(tmp_path: Path) -> None:
    lib = ModelLibrary(tmp_path / "nope")
    assert lib.scan() == [] and lib.find("x") is None


@pytest.mark.parametrize("endian", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_header_reader_agrees_with_gguf_reader(tmp_path: Path, endian: gguf.GGUFEndian) -> None:
    path = tmp_path / "kinds.gguf"
    w = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    w.add_uint8("t.u8", 200)
    w.add_int16("t.i16", -3)
    w.add_uint64("t.u64", 2**40)
    w.add_int64("t.i64", -(2**40))
    w.add_float32("t.f32", 1e-5)
    w.add_float64("t.f64", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.short", [1, 2, 3])
    w.add_array("t.names", ["a", "b"])
    w.add_array("t.long_ints", list(range(1000)))
    w.add_array("t.long_strs", [f"s{i}" for i in range(5000)])
    w.add_tensor("a", np.ones((3, 5), dtype=np.float32))
    w.add_tensor("b", np.ones((2, 4), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    header = read_header(path)
    ref = gguf.GGUFReader(str(path))
    assert set(header.metadata) == {k for k in ref.fields if not k.startswith("GGUF.")}
    for key, value in header.metadata.items():
        expected = ref.fields[key].contents()
        if key.startswith("t.long"):
            assert value is None and header.array_lengths[key] == len(expected)
        elif key == "t.f32":
            assert value == 1e-5  # the shortest float32 repr, not 9.99999974e-06
        else:
            assert value == expected, key
    assert header.data_start == ref.data_offset
    got = [(t.name, t.type_id, t.n_elements, header.data_start + t.offset, t.n_bytes) for t in header.tensors]
    want = [(t.name, int(t.tensor_type), t.n_elements, t.data_offset, t.n_bytes) for t in ref.tensors]
    assert got == want

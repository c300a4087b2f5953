"""Tiny hand-wired llama GGUF models that a real llama-server loads in well under a second.

The weights are chosen so generation is fully predictable regardless of sampling settings:

* every transformer block is the identity on the residual stream (``attn_output`` and ``ffn_down``
  are zero), so the final hidden state is just the embedding of the last token;
* each lowercase letter embeds as a one-hot vector on its own dimension (0..25), every other token
  on one of the remaining dimensions;
* the output matrix maps a letter's dimension to the next letter in the cycle and every other
  dimension to the cycle's first letter, with a logit margin so large that no temperature or
  truncation setting a test would use can pick anything else.

After the chat prompt (which ends in a newline byte token) model "A" therefore writes
``abcdefghijklmnopqrstuvwxyzabc...`` and model "B" ``zyxwvutsrqponmlkjihgfedcbazyx...``.
A raw ``/completion`` prompt ending in a lowercase letter continues the cycle after that letter.

Neither model ever writes an end-of-generation token: a request without a token limit runs until the
context is full, which takes well under a second on an idle machine and minutes on one whose cores
are busy. Tests always bound their answers (``max_tokens``, ``num_predict``).

The margin beats temperature, top-k/top-p/min-p, typical-p, XTC, mirostat and the usual
repetition/presence/frequency penalties. DRY (off by default in llama-server) does not qualify: its
penalty grows exponentially with the length of a repeated run and eventually breaks the cycle.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gguf
import numpy as np

MODEL_A_TEXT = "abcdefghijklmnopqrstuvwxyz"
MODEL_B_TEXT = "zyxwvutsrqponmlkjihgfedcba"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

ARCH = "llama"
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 64
RMS_EPS = 1e-5
# Logit gap between the forced token and every other token. Even at temperature 2 the runner-up
# probability is ~e^-50 per token, so sampling can never deviate.
LOGIT_MARGIN = 100.0

_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
_SPM_SPACE = "\u2581"

_TEXTS = {"A": MODEL_A_TEXT, "B": MODEL_B_TEXT}


@dataclass(frozen=True)
class _Vocab:
    tokens: list[str]
    types: list[int]
    scores: list[float]
    ids: dict[str, int]
    bos: int
    eos: int
    unk: int


def _build_vocab() -> _Vocab:
    T = gguf.TokenType
    entries: list[tuple[str, int]] = [("<unk>", T.UNKNOWN), ("<s>", T.CONTROL), ("</s>", T.CONTROL)]
    # llama.cpp's SPM byte fallback looks these up by exact text, so the hex must be upper case.
    entries += [(f"<0x{b:02X}>", T.BYTE) for b in range(256)]
    singles = _SPM_SPACE + string.ascii_lowercase + string.ascii_uppercase + string.digits + _PUNCTUATION
    entries += [(ch, T.NORMAL) for ch in singles]
    entries += [("<|im_start|>", T.CONTROL), ("<|im_end|>", T.CONTROL)]
    tokens = [text for text, _ in entries]
    ids = {text: i for i, text in enumerate(tokens)}
    assert len(ids) == len(tokens), "duplicate token text"
    # Only single characters exist, so SPM never finds a merge and scores are irrelevant; they must
    # still be present because the llama tokenizer reads them.
    return _Vocab(
        tokens=tokens,
        types=[int(t) for _, t in entries],
        scores=[0.0] * len(tokens),
        ids=ids,
        bos=ids["<s>"],
        # <|im_end|> makes llama-server stop at the template's turn end; the model never emits it.
        eos=ids["<|im_end|>"],
        unk=ids["<unk>"],
    )


_VOCAB = _build_vocab()


def _hidden_dim(token_id: int, text: str) -> int:
    if len(text) == 1 and text in MODEL_A_TEXT:
        return MODEL_A_TEXT.index(text)
    # Spread non-letters over the spare dimensions so mean-pooled embeddings of different texts
    # differ in more than their letters.
    spare = N_EMBD - len(MODEL_A_TEXT)
    return len(MODEL_A_TEXT) + token_id % spare


def _tensors(variant: str) -> dict[str, np.ndarray]:
    cycle = _TEXTS[variant]
    vocab = _VOCAB
    n_vocab = len(vocab.tokens)
    f32 = np.float32

    # numpy shapes are (rows, cols) = ggml's (ne1, ne0), i.e. the reverse of llama.cpp's notation.
    token_embd = np.zeros((n_vocab, N_EMBD), dtype=f32)
    for tid, text in enumerate(vocab.tokens):
        token_embd[tid, _hidden_dim(tid, text)] = 1.0

    # RMS norm with unit weights turns a unit one-hot into sqrt(n_embd) on that dimension.
    scale = LOGIT_MARGIN / math.sqrt(N_EMBD)
    output = np.zeros((n_vocab, N_EMBD), dtype=f32)
    for i, letter in enumerate(MODEL_A_TEXT):
        nxt = cycle[(cycle.index(letter) + 1) % len(cycle)]
        output[vocab.ids[nxt], i] = scale
    output[vocab.ids[cycle[0]], len(MODEL_A_TEXT) :] = scale

    ones = np.ones(N_EMBD, dtype=f32)
    head_dim = N_EMBD // N_HEAD
    tensors: dict[str, np.ndarray] = {"token_embd.weight": token_embd}
    for b in range(N_LAYER):
        p = f"blk.{b}."
        tensors[p + "attn_norm.weight"] = ones
        tensors[p + "attn_q.weight"] = np.zeros((N_HEAD * head_dim, N_EMBD), dtype=f32)
        tensors[p + "attn_k.weight"] = np.zeros((N_HEAD_KV * head_dim, N_EMBD), dtype=f32)
        tensors[p + "attn_v.weight"] = np.zeros((N_HEAD_KV * head_dim, N_EMBD), dtype=f32)
        tensors[p + "attn_output.weight"] = np.zeros((N_EMBD, N_HEAD * head_dim), dtype=f32)
        tensors[p + "ffn_norm.weight"] = ones
        tensors[p + "ffn_gate.weight"] = np.zeros((N_FF, N_EMBD), dtype=f32)
        tensors[p + "ffn_up.weight"] = np.zeros((N_FF, N_EMBD), dtype=f32)
        tensors[p + "ffn_down.weight"] = np.zeros((N_EMBD, N_FF), dtype=f32)
    tensors["output_norm.weight"] = ones
    tensors["output.weight"] = output
    return tensors


def _add_metadata(w: gguf.GGUFWriter, *, name: str, embedding: bool, context_length: int) -> None:
    vocab = _VOCAB
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(context_length)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_vocab_size(len(vocab.tokens))
    if embedding:
        w.add_pooling_type(gguf.PoolingType.MEAN)

    w.add_tokenizer_model("llama")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_bos_token_id(vocab.bos)
    w.add_eos_token_id(vocab.eos)
    w.add_unk_token_id(vocab.unk)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)


def _write(w: gguf.GGUFWriter, path: Path) -> None:
    try:
        w.write_header_to_file(path)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


def part_paths(path: Path, n_parts: int) -> list[Path]:
    """File names llama.cpp expects for an ``n_parts`` split (``<stem>-00001-of-0000N.gguf``)."""
    if n_parts == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i:05d}-of-{n_parts:05d}.gguf") for i in range(1, n_parts + 1)]


def write_tiny_model(
    path: Path,
    variant: Literal["A", "B"] = "A",
    *,
    embedding: bool = False,
    n_parts: int = 1,
    context_length: int = 4096,
    name: str | None = None,
) -> list[Path]:
    """Write a tiny deterministic llama model and return the files written.

    With ``n_parts > 1`` the model is split like ``gguf-split`` does it: the files are named
    ``<stem>-00001-of-0000N.gguf`` next to ``path`` (``path`` itself is not written), the first part
    carries all metadata, and every part carries ``split.no`` / ``split.count`` /
    ``split.tensors.count``. Pass the first returned path to ``llama-server -m``.
    """
    if variant not in _TEXTS:
        raise ValueError(f"unknown variant {variant!r}; expected 'A' or 'B'")
    path = Path(path)
    tensors = _tensors(variant)
    if not 1 <= n_parts <= len(tensors):
        raise ValueError(f"n_parts must be between 1 and {len(tensors)}, got {n_parts}")
    if name is None:
        name = f"tiny-llama-{variant.lower()}" + ("-embed" if embedding else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = part_paths(path, n_parts)

    names = list(tensors)
    # Contiguous, near-equal chunks keep the tensor order identical to an unsplit file.
    bounds = [round(i * len(names) / n_parts) for i in range(n_parts + 1)]
    for part, part_path in enumerate(paths):
        w = gguf.GGUFWriter(part_path, ARCH)
        if part == 0:
            _add_metadata(w, name=name, embedding=embedding, context_length=context_length)
        else:
            # gguf-split leaves later parts with nothing but the split keys; mirror that so code
            # reading metadata cannot accidentally depend on a non-first part.
            w.kv_data[0].clear()
        if n_parts > 1:
            split = gguf.Keys.Split
            w.add_uint16(split.LLM_KV_SPLIT_NO, part)
            w.add_uint16(split.LLM_KV_SPLIT_COUNT, n_parts)
            w.add_int32(split.LLM_KV_SPLIT_TENSORS_COUNT, len(names))
        for tname in names[bounds[part] : bounds[part + 1]]:
            w.add_tensor(tname, tensors[tname])
        _write(w, part_path)
    return paths


def write_truncated_model(path: Path) -> Path:
    """Write a model file cut in half: the header parses, but tensor data runs past end of file."""
    path = Path(path)
    write_tiny_model(path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    return path


def expected_text(variant: str, n_chars: int) -> str:
    """The text a variant generates for ``n_chars`` tokens (one character per token)."""
    cycle = _TEXTS[variant]
    reps = n_chars // len(cycle) + 1
    return (cycle * reps)[:n_chars]

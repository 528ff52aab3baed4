"""Synthetic GGUF models in the shapes of the architecture families llmtune plans for.

Each builder writes, through ``synth.write_gguf`` (the real ``gguf.GGUFWriter``,
tensor data left as a sparse hole), a file with exactly the metadata keys and
tensors that the llama.cpp vendored by llama-cpp-python 0.3.36 requires for
that architecture: ``load_arch_hparams`` and ``load_arch_tensors`` in
``src/models/<arch>.cpp``, the shared keys in ``llama_model_base::load_hparams``
(``src/llama-model.cpp``) and the names in ``LLM_TENSOR_NAMES``
(``src/llama-arch.cpp``). The file must hold no tensor that llama.cpp does
not create: the loader rejects the file ("wrong number of tensors") otherwise.

Defaults are tiny (4-6 layers, n_embd 256, vocab 1000) so llama.cpp loads
them in a fraction of a second on the CPU; every size is a parameter.
``weight_type`` applies to the matrix weights; norms, biases, routers and SSM
parameters stay F32 as converters write them. A matrix whose row length is
not a multiple of the type's block falls back to F16 (llama-quantize's last
resort too).

Every builder returns a ``SynthModel`` that records the hyper-parameters the
estimator needs to predict llama.cpp's buffers (head sizes, SWA window, MLA
ranks, SSM sizes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from synth import Tensor, write_gguf

QT = GGMLQuantizationType
F32 = QT.F32
F16 = QT.F16

# general.file_type (enum llama_ftype) for files whose matrices are all one type.
_FILE_TYPES: dict[QT, int] = {
    QT.F32: 0, QT.F16: 1, QT.Q4_0: 2, QT.Q4_1: 3, QT.Q8_0: 7, QT.Q5_0: 8, QT.Q5_1: 9,
    QT.Q2_K: 10, QT.Q3_K: 12, QT.Q4_K: 15, QT.Q5_K: 17, QT.Q6_K: 18, QT.BF16: 32,
}  # fmt: skip


@dataclass(frozen=True)
class SynthModel:
    """A synthetic model on disk and the shape it was built with."""

    path: Path
    arch: str
    family: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    weight_type: QT
    hparams: dict[str, Any] = field(default_factory=dict)
    tensors: tuple[Tensor, ...] = ()

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _tokenizer_kv(n_vocab: int, control_tokens: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """A llama (SPM) vocabulary llama.cpp accepts: <unk>, <s>, </s>, extra control tokens, plain tokens."""
    special = ["<unk>", "<s>", "</s>", *control_tokens]
    tokens = special + [f"t{i}" for i in range(n_vocab - len(special))]
    # UNKNOWN, then CONTROL for the specials, then NORMAL
    token_type = [2] + [3] * (len(special) - 1) + [1] * (n_vocab - len(special))
    return [
        ("tokenizer.ggml.model", "llama"),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.scores", ([0.0] * n_vocab, GGUFValueType.ARRAY, GGUFValueType.FLOAT32)),
        ("tokenizer.ggml.token_type", (token_type, GGUFValueType.ARRAY, GGUFValueType.INT32)),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
        ("tokenizer.ggml.unknown_token_id", 0),
    ]


def _u32_array(values: Sequence[int]) -> tuple[list[int], GGUFValueType, GGUFValueType]:
    return (list(values), GGUFValueType.ARRAY, GGUFValueType.UINT32)


class _Builder:
    """Collects metadata and tensors for one file."""

    def __init__(
        self,
        arch: str,
        family: str,
        weight_type: QT,
        n_vocab: int,
        control_tokens: Sequence[str] = (),
    ) -> None:
        self.arch = arch
        self.control_tokens = tuple(control_tokens)
        self.family = family
        self.weight_type = weight_type
        self.n_vocab = n_vocab
        self.kv: list[tuple[str, Any]] = [("general.name", f"synthetic {family}")]
        if weight_type in _FILE_TYPES:
            self.kv.append(("general.file_type", _FILE_TYPES[weight_type]))
        self.tensors: list[Tensor] = []

    def key(self, name: str, value: Any) -> None:
        """An ``<arch>.name`` key."""
        self.kv.append((f"{self.arch}.{name}", value))

    def mat(self, name: str, *shape: int) -> None:
        """A matrix weight in ``weight_type`` (F16 when the row length does not fit the block)."""
        block, _ = GGML_QUANT_SIZES[self.weight_type]
        dtype = self.weight_type if shape[0] % block == 0 else F16
        self.tensors.append(Tensor(name, tuple(shape), dtype))

    def f32(self, name: str, *shape: int) -> None:
        self.tensors.append(Tensor(name, tuple(shape), F32))

    def write(
        self,
        path: str | os.PathLike[str],
        *,
        n_layer: int,
        n_embd: int,
        n_ctx_train: int,
        hparams: dict[str, Any],
    ) -> SynthModel:
        kv = [*self.kv, *_tokenizer_kv(self.n_vocab, self.control_tokens)]
        (written,) = write_gguf(path, kv, self.tensors, arch=self.arch)
        return SynthModel(
            path=written,
            arch=self.arch,
            family=self.family,
            n_layer=n_layer,
            n_embd=n_embd,
            n_vocab=self.n_vocab,
            n_ctx_train=n_ctx_train,
            weight_type=self.weight_type,
            hparams=hparams,
            tensors=tuple(self.tensors),
        )


def _common_keys(
    b: _Builder,
    *,
    n_layer: int,
    n_embd: int,
    n_ff: int,
    n_head: int,
    n_head_kv: int | Sequence[int],
    n_ctx_train: int,
) -> None:
    b.key("block_count", n_layer)
    b.key("context_length", n_ctx_train)
    b.key("embedding_length", n_embd)
    b.key("feed_forward_length", n_ff)
    b.key("attention.head_count", n_head)
    if isinstance(n_head_kv, int):
        b.key("attention.head_count_kv", n_head_kv)
    else:
        b.key("attention.head_count_kv", _u32_array(n_head_kv))
    b.key("attention.layer_norm_rms_epsilon", 1e-6)


def _embeddings(b: _Builder, n_embd: int, *, output: bool) -> None:
    b.mat("token_embd.weight", n_embd, b.n_vocab)
    b.f32("output_norm.weight", n_embd)
    if output:
        b.mat("output.weight", n_embd, b.n_vocab)


def _dense_ffn(b: _Builder, i: int, n_embd: int, n_ff: int) -> None:
    b.f32(f"blk.{i}.ffn_norm.weight", n_embd)
    b.mat(f"blk.{i}.ffn_gate.weight", n_embd, n_ff)
    b.mat(f"blk.{i}.ffn_up.weight", n_embd, n_ff)
    b.mat(f"blk.{i}.ffn_down.weight", n_ff, n_embd)


def _attention(
    b: _Builder,
    i: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    *,
    bias: bool = False,
    qk_norm: bool = False,
    q_gate: bool = False,
) -> None:
    """Separate Q/K/V as ``create_tensor_qkv`` reads them when there is no fused ``attn_qkv``."""
    q_dim = head_dim * n_head
    kv_dim = head_dim * n_head_kv
    b.mat(f"blk.{i}.attn_q.weight", n_embd, q_dim * (2 if q_gate else 1))
    b.mat(f"blk.{i}.attn_k.weight", n_embd, kv_dim)
    b.mat(f"blk.{i}.attn_v.weight", n_embd, kv_dim)
    if bias:
        b.f32(f"blk.{i}.attn_q.bias", q_dim)
        b.f32(f"blk.{i}.attn_k.bias", kv_dim)
        b.f32(f"blk.{i}.attn_v.bias", kv_dim)
    b.mat(f"blk.{i}.attn_output.weight", q_dim, n_embd)
    if qk_norm:
        b.f32(f"blk.{i}.attn_q_norm.weight", head_dim)
        b.f32(f"blk.{i}.attn_k_norm.weight", head_dim)


def _attn_hparams(n_head: int, n_head_kv: int, head_dim: int, **extra: Any) -> dict[str, Any]:
    return {
        "n_head": n_head,
        "n_head_kv": n_head_kv,
        "head_dim_k": head_dim,
        "head_dim_v": head_dim,
        **extra,
    }


# --- dense transformer families ----------------------------------------------------------


def build_llama(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 8,
    n_head_kv: int = 8,
    n_ff: int = 512,
    n_vocab: int = 1000,
    n_ctx_train: int = 8192,
    weight_type: QT = F16,
    family: str = "llama",
) -> SynthModel:
    """Llama 2/3 (``src/models/llama.cpp``): rope dimension must equal the head size."""
    head_dim = n_embd // n_head
    b = _Builder("llama", family, weight_type, n_vocab)
    _common_keys(b, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                 n_head_kv=n_head_kv, n_ctx_train=n_ctx_train)  # fmt: skip
    b.key("rope.dimension_count", head_dim)
    b.key("rope.freq_base", 500000.0)
    _embeddings(b, n_embd, output=True)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        _attention(b, i, n_embd, n_head, n_head_kv, head_dim)
        _dense_ffn(b, i, n_embd, n_ff)
    return b.write(path, n_layer=n_layer, n_embd=n_embd, n_ctx_train=n_ctx_train,
                   hparams=_attn_hparams(n_head, n_head_kv, head_dim, n_ff=n_ff))  # fmt: skip


def build_llama_gqa(path: str | os.PathLike[str], **kwargs: Any) -> SynthModel:
    """Llama with grouped-query attention (8 query heads share 2 KV heads by default)."""
    kwargs.setdefault("n_head_kv", 2)
    return build_llama(path, family="llama_gqa", **kwargs)


def build_qwen2(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 8,
    n_head_kv: int = 2,
    n_ff: int = 768,
    n_vocab: int = 1000,
    n_ctx_train: int = 32768,
    weight_type: QT = F16,
) -> SynthModel:
    """Qwen2/2.5 (``src/models/qwen2.cpp``): Q/K/V biases; Q width is n_embd."""
    head_dim = n_embd // n_head
    b = _Builder("qwen2", "qwen2", weight_type, n_vocab)
    _common_keys(b, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                 n_head_kv=n_head_kv, n_ctx_train=n_ctx_train)  # fmt: skip
    b.key("rope.freq_base", 1000000.0)
    _embeddings(b, n_embd, output=True)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        _attention(b, i, n_embd, n_head, n_head_kv, head_dim, bias=True)
        _dense_ffn(b, i, n_embd, n_ff)
    return b.write(path, n_layer=n_layer, n_embd=n_embd, n_ctx_train=n_ctx_train,
                   hparams=_attn_hparams(n_head, n_head_kv, head_dim, n_ff=n_ff))  # fmt: skip


def build_qwen3(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 8,
    n_head_kv: int = 2,
    head_dim: int = 64,
    n_ff: int = 768,
    n_vocab: int = 1000,
    n_ctx_train: int = 40960,
    weight_type: QT = F16,
) -> SynthModel:
    """Qwen3 (``src/models/qwen3.cpp``): Q/K RMS norms; head size set by key_length (Q width != n_embd)."""
    b = _Builder("qwen3", "qwen3", weight_type, n_vocab)
    _common_keys(b, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                 n_head_kv=n_head_kv, n_ctx_train=n_ctx_train)  # fmt: skip
    b.key("attention.key_length", head_dim)
    b.key("attention.value_length", head_dim)
    b.key("rope.freq_base", 1000000.0)
    _embeddings(b, n_embd, output=True)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        _attention(b, i, n_embd, n_head, n_head_kv, head_dim, qk_norm=True)
        _dense_ffn(b, i, n_embd, n_ff)
    return b.write(path, n_layer=n_layer, n_embd=n_embd, n_ctx_train=n_ctx_train,
                   hparams=_attn_hparams(n_head, n_head_kv, head_dim, n_ff=n_ff))  # fmt: skip


def build_gemma2(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int = 64,
    n_ff: int = 768,
    n_vocab: int = 1000,
    n_ctx_train: int = 8192,
    sliding_window: int = 256,
    weight_type: QT = F16,
) -> SynthModel:
    """Gemma 2 (``src/models/gemma2.cpp``): SWA on even layers (pattern 2), soft-capping, tied output.

    Gemma 2 always ties the output to token_embd (``TENSOR_DUPLICATED``): the file
    must not hold an ``output.weight``.
    """
    b = _Builder("gemma2", "gemma2", weight_type, n_vocab)
    _common_keys(b, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                 n_head_kv=n_head_kv, n_ctx_train=n_ctx_train)  # fmt: skip
    b.key("attention.key_length", head_dim)
    b.key("attention.value_length", head_dim)
    b.key("attention.sliding_window", sliding_window)
    b.key("attn_logit_softcapping", 50.0)
    b.key("final_logit_softcapping", 30.0)
    _embeddings(b, n_embd, output=False)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        _attention(b, i, n_embd, n_head, n_head_kv, head_dim)
        b.f32(f"blk.{i}.post_attention_norm.weight", n_embd)
        _dense_ffn(b, i, n_embd, n_ff)
        b.f32(f"blk.{i}.post_ffw_norm.weight", n_embd)
    # set_swa_pattern(2) (llama-hparams.cpp): the last layer of each pair is dense.
    swa_layers = [i for i in range(n_layer) if i % 2 == 0]
    return b.write(path, n_layer=n_layer, n_embd=n_embd, n_ctx_train=n_ctx_train,
                   hparams=_attn_hparams(n_head, n_head_kv, head_dim, n_ff=n_ff,
                                         n_swa=sliding_window, swa_layers=swa_layers))  # fmt: skip


def build_gemma3(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 6,
    n_embd: int = 256,
    n_head: int = 4,
    n_head_kv: int = 1,
    head_dim: int = 64,
    n_ff: int = 768,
    n_vocab: int = 1000,
    n_ctx_train: int = 32768,
    sliding_window: int = 512,
    weight_type: QT = F16,
) -> SynthModel:
    """Gemma 3 (``src/models/gemma3.cpp``): 5 SWA layers then 1 global (pattern 6), Q/K norms, tied output."""
    b = _Builder("gemma3", "gemma3", weight_type, n_vocab)
    _common_keys(b, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                 n_head_kv=n_head_kv, n_ctx_train=n_ctx_train)  # fmt: skip
    b.key("attention.key_length", head_dim)
    b.key("attention.value_length", head_dim)
    b.key("attention.sliding_window", sliding_window)
    b.key("rope.freq_base", 1000000.0)
    _embeddings(b, n_embd, output=False)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        _attention(b, i, n_embd, n_head, n_head_kv, head_dim, qk_norm=True)
        b.f32(f"blk.{i}.post_attention_norm.weight", n_embd)
        _dense_ffn(b, i, n_embd, n_ff)
        b.f32(f"blk.{i}.post_ffw_norm.weight", n_embd)
    swa_layers = [i for i in range(n_layer) if i % 6 < 5]  # set_swa_pattern(6)
    return b.write(path, n_layer=n_layer, n_embd=n_embd, n_ctx_train=n_ctx_train,
                   hparams=_attn_hparams(n_head, n_head_kv, head_dim, n_ff=n_ff,
                                         n_swa=sliding_window, swa_layers=swa_layers))  # fmt: skip


def build_phi3(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 8,
    n_head_kv: int = 8,
    n_ff: int = 512,
    n_vocab: int = 1000,
    n_ctx_train: int = 4096,
    weight_type: QT = F16,
) -> SynthModel:
    """Phi-3 (``src/models/phi3.cpp``): fused ``attn_qkv``, fused gate+up as one ``ffn_up`` of 2*n_ff rows.

    A ``general.name`` containing "phi3" makes llama.cpp's vocabulary loader look
    up ``<|endoftext|>`` (``llama_vocab::impl::load``, with ``token_to_id.at``):
    without that token the load fails with "unordered_map::at".
    """
    head_dim = n_embd // n_head
    kv_dim = head_dim * n_head_kv
    b = _Builder("phi3", "phi3", weight_type, n_vocab, control_tokens=["<|endoftext|>"])
    _common_keys(b, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                 n_head_kv=n_head_kv, n_ctx_train=n_ctx_train)  # fmt: skip
    b.key("rope.dimension_count", head_dim)
    _embeddings(b, n_embd, output=True)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        b.mat(f"blk.{i}.attn_qkv.weight", n_embd, n_embd + 2 * kv_dim)
        b.mat(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        b.f32(f"blk.{i}.ffn_norm.weight", n_embd)
        b.mat(f"blk.{i}.ffn_up.weight", n_embd, 2 * n_ff)
        b.mat(f"blk.{i}.ffn_down.weight", n_ff, n_embd)
    return b.write(path, n_layer=n_layer, n_embd=n_embd, n_ctx_train=n_ctx_train,
                   hparams=_attn_hparams(n_head, n_head_kv, head_dim, n_ff=n_ff))  # fmt: skip


# --- mixture of experts ------------------------------------------------------------------


def build_qwen3moe(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 8,
    n_head_kv: int = 2,
    head_dim: int = 64,
    n_ff: int = 768,
    n_expert: int = 8,
    n_expert_used: int = 2,
    n_ff_exp: int = 256,
    n_vocab: int = 1000,
    n_ctx_train: int = 40960,
    weight_type: QT = F16,
) -> SynthModel:
    """Qwen3-MoE (``src/models/qwen3moe.cpp``): router ``ffn_gate_inp`` and stacked ``ffn_*_exps``, no shared expert."""
    b = _Builder("qwen3moe", "qwen3moe", weight_type, n_vocab)
    _common_keys(b, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                 n_head_kv=n_head_kv, n_ctx_train=n_ctx_train)  # fmt: skip
    b.key("attention.key_length", head_dim)
    b.key("attention.value_length", head_dim)
    b.key("expert_count", n_expert)
    b.key("expert_used_count", n_expert_used)
    b.key("expert_feed_forward_length", n_ff_exp)
    b.key("rope.freq_base", 1000000.0)
    _embeddings(b, n_embd, output=True)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        _attention(b, i, n_embd, n_head, n_head_kv, head_dim, qk_norm=True)
        b.f32(f"blk.{i}.ffn_norm.weight", n_embd)
        b.f32(f"blk.{i}.ffn_gate_inp.weight", n_embd, n_expert)
        b.mat(f"blk.{i}.ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert)
        b.mat(f"blk.{i}.ffn_up_exps.weight", n_embd, n_ff_exp, n_expert)
        b.mat(f"blk.{i}.ffn_down_exps.weight", n_ff_exp, n_embd, n_expert)
    return b.write(path, n_layer=n_layer, n_embd=n_embd, n_ctx_train=n_ctx_train,
                   hparams=_attn_hparams(n_head, n_head_kv, head_dim, n_ff=n_ff, n_expert=n_expert,
                                         n_expert_used=n_expert_used, n_ff_exp=n_ff_exp))  # fmt: skip


def build_deepseek2(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 4,
    q_lora_rank: int = 128,
    kv_lora_rank: int = 128,
    qk_nope_head_dim: int = 64,
    qk_rope_head_dim: int = 32,
    v_head_dim: int = 64,
    n_ff: int = 512,
    n_expert: int = 8,
    n_expert_used: int = 2,
    n_expert_shared: int = 1,
    n_ff_exp: int = 128,
    n_dense_lead: int = 1,
    n_vocab: int = 1000,
    n_ctx_train: int = 163840,
    weight_type: QT = F16,
) -> SynthModel:
    """DeepSeek V2/V3 with MLA as newer converters write it (``src/models/deepseek2.cpp``).

    MLA needs both ``key_length_mla`` and ``value_length_mla`` (``llama_hparams::is_mla``);
    then ``key_length`` = kv_lora_rank + rope dim, ``value_length`` = kv_lora_rank,
    ``head_count_kv`` = 1, and the KV cache holds K only (kv_lora_rank + rope wide).
    ``q_lora_rank`` is required unless the layer count is a "lite" one (26/27).
    """
    key_mla = qk_nope_head_dim + qk_rope_head_dim
    b = _Builder("deepseek2", "deepseek2", weight_type, n_vocab)
    _common_keys(b, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                 n_head_kv=1, n_ctx_train=n_ctx_train)  # fmt: skip
    b.key("attention.key_length", kv_lora_rank + qk_rope_head_dim)
    b.key("attention.value_length", kv_lora_rank)
    b.key("attention.key_length_mla", key_mla)
    b.key("attention.value_length_mla", v_head_dim)
    b.key("attention.q_lora_rank", q_lora_rank)
    b.key("attention.kv_lora_rank", kv_lora_rank)
    b.key("rope.dimension_count", qk_rope_head_dim)
    b.key("leading_dense_block_count", n_dense_lead)
    b.key("expert_count", n_expert)
    b.key("expert_used_count", n_expert_used)
    b.key("expert_shared_count", n_expert_shared)
    b.key("expert_feed_forward_length", n_ff_exp)
    b.key("expert_weights_scale", 2.5)
    b.key("expert_weights_norm", True)
    b.key("expert_gating_func", 2)  # sigmoid, as DeepSeek V3
    _embeddings(b, n_embd, output=True)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        b.f32(f"blk.{i}.attn_q_a_norm.weight", q_lora_rank)
        b.f32(f"blk.{i}.attn_kv_a_norm.weight", kv_lora_rank)
        b.mat(f"blk.{i}.attn_q_a.weight", n_embd, q_lora_rank)
        b.mat(f"blk.{i}.attn_q_b.weight", q_lora_rank, n_head * key_mla)
        b.mat(f"blk.{i}.attn_kv_a_mqa.weight", n_embd, kv_lora_rank + qk_rope_head_dim)
        b.mat(f"blk.{i}.attn_k_b.weight", qk_nope_head_dim, kv_lora_rank, n_head)
        b.mat(f"blk.{i}.attn_v_b.weight", kv_lora_rank, v_head_dim, n_head)
        b.mat(f"blk.{i}.attn_output.weight", n_head * v_head_dim, n_embd)
        if i < n_dense_lead:
            _dense_ffn(b, i, n_embd, n_ff)
            continue
        b.f32(f"blk.{i}.ffn_norm.weight", n_embd)
        b.f32(f"blk.{i}.ffn_gate_inp.weight", n_embd, n_expert)
        b.f32(f"blk.{i}.exp_probs_b.bias", n_expert)
        b.mat(f"blk.{i}.ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert)
        b.mat(f"blk.{i}.ffn_up_exps.weight", n_embd, n_ff_exp, n_expert)
        b.mat(f"blk.{i}.ffn_down_exps.weight", n_ff_exp, n_embd, n_expert)
        b.mat(f"blk.{i}.ffn_gate_shexp.weight", n_embd, n_ff_exp * n_expert_shared)
        b.mat(f"blk.{i}.ffn_up_shexp.weight", n_embd, n_ff_exp * n_expert_shared)
        b.mat(f"blk.{i}.ffn_down_shexp.weight", n_ff_exp * n_expert_shared, n_embd)
    hparams = {
        "n_head": n_head,
        "n_head_kv": 1,
        "head_dim_k": kv_lora_rank + qk_rope_head_dim,
        "head_dim_v": kv_lora_rank,
        "is_mla": True,
        "kv_lora_rank": kv_lora_rank,
        "q_lora_rank": q_lora_rank,
        "qk_rope_head_dim": qk_rope_head_dim,
        "n_expert": n_expert,
        "n_expert_used": n_expert_used,
        "n_expert_shared": n_expert_shared,
        "n_ff_exp": n_ff_exp,
        "n_ff": n_ff,
        "n_dense_lead": n_dense_lead,
    }
    return b.write(path, n_layer=n_layer, n_embd=n_embd, n_ctx_train=n_ctx_train, hparams=hparams)


# --- recurrent and hybrid ----------------------------------------------------------------


def build_mamba(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    d_conv: int = 4,
    d_state: int = 16,
    dt_rank: int | None = None,
    n_vocab: int = 1000,
    n_ctx_train: int = 1048576,
    weight_type: QT = F16,
) -> SynthModel:
    """Mamba 1 (``src/models/mamba.cpp``): d_inner must be 2*n_embd; no attention, no KV cache."""
    d_inner = 2 * n_embd
    dt_rank = dt_rank if dt_rank is not None else -(-n_embd // 16)
    b = _Builder("mamba", "mamba", weight_type, n_vocab)
    _common_keys(b, n_layer=n_layer, n_embd=n_embd, n_ff=0, n_head=0, n_head_kv=0,
                 n_ctx_train=n_ctx_train)  # fmt: skip
    b.key("ssm.conv_kernel", d_conv)
    b.key("ssm.inner_size", d_inner)
    b.key("ssm.state_size", d_state)
    b.key("ssm.time_step_rank", dt_rank)
    _embeddings(b, n_embd, output=True)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        b.mat(f"blk.{i}.ssm_in.weight", n_embd, 2 * d_inner)
        b.f32(f"blk.{i}.ssm_conv1d.weight", d_conv, d_inner)
        b.f32(f"blk.{i}.ssm_conv1d.bias", d_inner)
        b.mat(f"blk.{i}.ssm_x.weight", d_inner, dt_rank + 2 * d_state)
        b.mat(f"blk.{i}.ssm_dt.weight", dt_rank, d_inner)
        b.f32(f"blk.{i}.ssm_dt.bias", d_inner)
        b.f32(f"blk.{i}.ssm_a", d_state, d_inner)
        b.f32(f"blk.{i}.ssm_d", d_inner)
        b.mat(f"blk.{i}.ssm_out.weight", d_inner, n_embd)
    hparams = {"d_conv": d_conv, "d_inner": d_inner, "d_state": d_state, "dt_rank": dt_rank,
               "n_group": 0, "recurrent_layers": list(range(n_layer))}  # fmt: skip
    return b.write(path, n_layer=n_layer, n_embd=n_embd, n_ctx_train=n_ctx_train, hparams=hparams)


def _mamba2_mixer(
    b: _Builder,
    i: int,
    n_embd: int,
    d_conv: int,
    d_inner: int,
    d_state: int,
    n_group: int,
    n_head: int,
) -> None:
    conv_dim = d_inner + 2 * n_group * d_state
    b.mat(f"blk.{i}.ssm_in.weight", n_embd, d_inner + conv_dim + n_head)
    b.f32(f"blk.{i}.ssm_conv1d.weight", d_conv, conv_dim)
    b.f32(f"blk.{i}.ssm_conv1d.bias", conv_dim)
    b.f32(f"blk.{i}.ssm_dt.bias", n_head)
    b.f32(f"blk.{i}.ssm_a", 1, n_head)
    b.f32(f"blk.{i}.ssm_d", 1, n_head)
    b.f32(f"blk.{i}.ssm_norm.weight", d_inner // n_group, n_group)
    b.mat(f"blk.{i}.ssm_out.weight", d_inner, n_embd)


def build_mamba2(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    d_conv: int = 4,
    d_state: int = 64,
    head_dim: int = 64,
    n_group: int = 1,
    n_vocab: int = 1000,
    n_ctx_train: int = 1048576,
    weight_type: QT = F16,
) -> SynthModel:
    """Mamba 2 (``src/models/mamba2.cpp``): SSM heads = time_step_rank = d_inner / head_dim; grouped B/C."""
    d_inner = 2 * n_embd
    n_ssm_head = d_inner // head_dim
    b = _Builder("mamba2", "mamba2", weight_type, n_vocab)
    _common_keys(b, n_layer=n_layer, n_embd=n_embd, n_ff=0, n_head=0, n_head_kv=0,
                 n_ctx_train=n_ctx_train)  # fmt: skip
    b.key("ssm.conv_kernel", d_conv)
    b.key("ssm.inner_size", d_inner)
    b.key("ssm.state_size", d_state)
    b.key("ssm.time_step_rank", n_ssm_head)
    b.key("ssm.group_count", n_group)
    _embeddings(b, n_embd, output=True)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        _mamba2_mixer(b, i, n_embd, d_conv, d_inner, d_state, n_group, n_ssm_head)
    hparams = {"d_conv": d_conv, "d_inner": d_inner, "d_state": d_state, "dt_rank": n_ssm_head,
               "n_group": n_group, "recurrent_layers": list(range(n_layer))}  # fmt: skip
    return b.write(path, n_layer=n_layer, n_embd=n_embd, n_ctx_train=n_ctx_train, hparams=hparams)


def build_granitehybrid(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 8,
    n_head_kv: int = 2,
    attention_every: int = 4,
    n_ff: int = 512,
    d_conv: int = 4,
    d_state: int = 64,
    head_dim_ssm: int = 64,
    n_group: int = 1,
    n_vocab: int = 1000,
    n_ctx_train: int = 131072,
    weight_type: QT = F16,
) -> SynthModel:
    """Granite 4.0 hybrid (``src/models/granite-hybrid.cpp``): Mamba-2 layers plus some attention layers.

    A layer is recurrent iff its ``head_count_kv`` entry is 0; here every
    ``attention_every``-th layer (3, 7, ...) is attention. Every layer has a dense FFN.
    """
    head_dim = n_embd // n_head
    d_inner = 2 * n_embd
    n_ssm_head = d_inner // head_dim_ssm
    attn_layers = [i for i in range(n_layer) if (i + 1) % attention_every == 0]
    kv_heads = [n_head_kv if i in attn_layers else 0 for i in range(n_layer)]
    b = _Builder("granitehybrid", "granitehybrid", weight_type, n_vocab)
    _common_keys(b, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                 n_head_kv=kv_heads, n_ctx_train=n_ctx_train)  # fmt: skip
    b.key("ssm.conv_kernel", d_conv)
    b.key("ssm.inner_size", d_inner)
    b.key("ssm.state_size", d_state)
    b.key("ssm.time_step_rank", n_ssm_head)
    b.key("ssm.group_count", n_group)
    b.key("logit_scale", 8.0)
    b.key("residual_scale", 0.22)
    b.key("embedding_scale", 12.0)
    b.key("attention.scale", 0.0078125)
    b.key("rope.freq_base", 10000.0)
    _embeddings(b, n_embd, output=True)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        if i in attn_layers:
            _attention(b, i, n_embd, n_head, n_head_kv, head_dim)
        else:
            _mamba2_mixer(b, i, n_embd, d_conv, d_inner, d_state, n_group, n_ssm_head)
        _dense_ffn(b, i, n_embd, n_ff)
    hparams = {
        **_attn_hparams(n_head, n_head_kv, head_dim, n_ff=n_ff),
        "n_head_kv_per_layer": kv_heads,
        "attention_layers": attn_layers,
        "recurrent_layers": [i for i in range(n_layer) if i not in attn_layers],
        "d_conv": d_conv,
        "d_inner": d_inner,
        "d_state": d_state,
        "dt_rank": n_ssm_head,
        "n_group": n_group,
    }
    return b.write(path, n_layer=n_layer, n_embd=n_embd, n_ctx_train=n_ctx_train, hparams=hparams)


def build_qwen3next(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int = 64,
    rope_dim: int = 16,
    full_attention_interval: int = 4,
    d_conv: int = 4,
    linear_head_dim: int = 64,
    n_k_heads: int = 2,
    n_v_heads: int = 4,
    n_ff: int = 512,
    n_expert: int = 8,
    n_expert_used: int = 2,
    n_ff_exp: int = 128,
    n_ff_shexp: int = 128,
    n_vocab: int = 1000,
    n_ctx_train: int = 262144,
    weight_type: QT = F16,
) -> SynthModel:
    """Qwen3-Next (``src/models/qwen3next.cpp``): gated delta-net layers plus every 4th full attention, MoE.

    Attention layers have a gated Q (``attn_q`` is 2 * n_head * head_dim wide) and
    Q/K norms. Linear-attention layers use the fused ``attn_qkv`` + ``attn_gate``
    layout (not the legacy ``ssm_in``). SSM keys: inner_size = value dim,
    state_size = head dim, time_step_rank = V heads, group_count = K heads.
    """
    key_dim = linear_head_dim * n_k_heads
    value_dim = linear_head_dim * n_v_heads
    conv_dim = 2 * key_dim + value_dim
    attn_layers = [i for i in range(n_layer) if (i + 1) % full_attention_interval == 0]
    b = _Builder("qwen3next", "qwen3next", weight_type, n_vocab)
    _common_keys(b, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head,
                 n_head_kv=n_head_kv, n_ctx_train=n_ctx_train)  # fmt: skip
    b.key("attention.key_length", head_dim)
    b.key("attention.value_length", head_dim)
    b.key("rope.dimension_count", rope_dim)
    b.key("rope.freq_base", 10000000.0)
    b.key("full_attention_interval", full_attention_interval)
    b.key("expert_count", n_expert)
    b.key("expert_used_count", n_expert_used)
    b.key("expert_feed_forward_length", n_ff_exp)
    b.key("expert_shared_feed_forward_length", n_ff_shexp)
    b.key("ssm.conv_kernel", d_conv)
    b.key("ssm.inner_size", value_dim)
    b.key("ssm.state_size", linear_head_dim)
    b.key("ssm.time_step_rank", n_v_heads)
    b.key("ssm.group_count", n_k_heads)
    _embeddings(b, n_embd, output=True)
    for i in range(n_layer):
        b.f32(f"blk.{i}.attn_norm.weight", n_embd)
        b.f32(f"blk.{i}.post_attention_norm.weight", n_embd)
        if i in attn_layers:
            _attention(b, i, n_embd, n_head, n_head_kv, head_dim, qk_norm=True, q_gate=True)
        else:
            b.mat(f"blk.{i}.attn_qkv.weight", n_embd, conv_dim)
            b.mat(f"blk.{i}.attn_gate.weight", n_embd, value_dim)
            b.f32(f"blk.{i}.ssm_conv1d.weight", d_conv, conv_dim)
            b.f32(f"blk.{i}.ssm_dt.bias", n_v_heads)
            b.f32(f"blk.{i}.ssm_a", n_v_heads)
            b.mat(f"blk.{i}.ssm_ba.weight", n_embd, 2 * n_v_heads)
            b.f32(f"blk.{i}.ssm_norm.weight", linear_head_dim)
            b.mat(f"blk.{i}.ssm_out.weight", value_dim, n_embd)
        b.f32(f"blk.{i}.ffn_gate_inp.weight", n_embd, n_expert)
        b.mat(f"blk.{i}.ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert)
        b.mat(f"blk.{i}.ffn_up_exps.weight", n_embd, n_ff_exp, n_expert)
        b.mat(f"blk.{i}.ffn_down_exps.weight", n_ff_exp, n_embd, n_expert)
        b.f32(f"blk.{i}.ffn_gate_inp_shexp.weight", n_embd)
        b.mat(f"blk.{i}.ffn_gate_shexp.weight", n_embd, n_ff_shexp)
        b.mat(f"blk.{i}.ffn_up_shexp.weight", n_embd, n_ff_shexp)
        b.mat(f"blk.{i}.ffn_down_shexp.weight", n_ff_shexp, n_embd)
    hparams = {
        **_attn_hparams(n_head, n_head_kv, head_dim, n_ff=n_ff),
        "attention_layers": attn_layers,
        "recurrent_layers": [i for i in range(n_layer) if i not in attn_layers],
        "d_conv": d_conv,
        "d_inner": value_dim,
        "d_state": linear_head_dim,
        "dt_rank": n_v_heads,
        "n_group": n_k_heads,
        "n_expert": n_expert,
        "n_expert_used": n_expert_used,
        "n_ff_exp": n_ff_exp,
        "n_ff_shexp": n_ff_shexp,
    }
    return b.write(path, n_layer=n_layer, n_embd=n_embd, n_ctx_train=n_ctx_train, hparams=hparams)


Builder = Callable[..., SynthModel]

FAMILIES: dict[str, Builder] = {
    "llama": build_llama,
    "llama_gqa": build_llama_gqa,
    "qwen2": build_qwen2,
    "qwen3": build_qwen3,
    "gemma2": build_gemma2,
    "gemma3": build_gemma3,
    "phi3": build_phi3,
    "qwen3moe": build_qwen3moe,
    "deepseek2": build_deepseek2,
    "mamba": build_mamba,
    "mamba2": build_mamba2,
    "granitehybrid": build_granitehybrid,
    "qwen3next": build_qwen3next,
}

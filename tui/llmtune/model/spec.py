"""ModelSpec: one model's hyper-parameters and tensors, read once from its header.

One ModelSpec serves inspection, the fit estimate and quantization what-ifs.
Hyper-parameters come from the ``{arch}.*`` keys the way llama.cpp's
``llama_model::load_hparams`` (src/llama-model.cpp) reads them: head counts and
feed-forward lengths may be per-layer arrays, key/value lengths default to
``n_embd / n_head``, and so on.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmtune.errors import GGUFError
from llmtune.model.ggml_types import (
    FILE_TYPE_BY_NAME,
    FILE_TYPE_GUESSED,
    GGML_TYPES,
    file_type_name,
)
from llmtune.model.gguf_file import GGUFArray, GGUFFile, TensorInfo, Value, read_gguf

_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
# At most 9 digits: int() refuses numbers of over 4,300 digits, and any layer
# index past MAX_LAYERS is refused anyway.
_LAYER_RE = re.compile(r"^blk\.(\d{1,9})\.")
_INPUT_PREFIXES = ("token_embd", "token_types", "position_embd", "token_embd_norm")
_OUTPUT_PREFIXES = ("output.", "output_norm", "output_b", "cls")
# llama.cpp refuses models with more layers (LLAMA_MAX_LAYERS, src/llama-hparams.h);
# the cap also keeps a crafted block_count from building billions of layer entries.
MAX_LAYERS = 512

# Archs whose sliding-window layers follow a period (llama.cpp src/models/*.cpp,
# load_swa_pattern(ml, n, dense_first)): (default period, dense first, default window).
SWA_PATTERNS: dict[str, tuple[int, bool, int]] = {
    "gemma2": (2, False, 4096),
    "gemma3": (6, False, 0),
    "gemma3n": (5, False, 0),
    "cohere2": (4, False, 0),
    "cohere2moe": (4, True, 0),
    "gpt-oss": (2, False, 0),
    "openai-moe": (2, False, 0),
    "llama4": (4, False, 8192),
    "afmoe": (4, False, 0),
    "exaone-moe": (4, False, 0),
    "olmo2": (4, False, 0),
    "smallthinker": (4, True, 4096),
    "plamo3": (8, False, 0),
}
# Of those, the archs that slide only when the file gives (or defaults) a window.
_SWA_NEEDS_WINDOW = frozenset({"gemma3", "olmo2", "smallthinker", "plamo3", "llama4"})


def is_url(path: str) -> bool:
    """A model named by an http(s) URL (read over the network) rather than a path."""
    return path.startswith(("https://", "http://"))


def location(path: str) -> str:
    """A path made absolute, or a URL as it is (a model read over HTTP)."""
    return path if is_url(path) else os.path.abspath(path)


def _as_int(value: Value | None) -> int | None:
    """A metadata number as an int; None for NaN, infinities, non-numbers and
    floats beyond 64-bit integers (1e308 as a layer width would overflow the
    plan's float arithmetic; no GGUF integer type holds it)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and -(2.0**63) <= value < 2.0**64:
        return int(value)
    return None


@dataclass(frozen=True)
class LayerGroup:
    """The tensors of one repeating layer (``blk.N.*``)."""

    index: int
    tensors: tuple[TensorInfo, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors)


@dataclass(frozen=True)
class TypeStats:
    tensors: int
    parameters: int
    nbytes: int

    @property
    def bits_per_weight(self) -> float:
        return self.nbytes * 8 / self.parameters if self.parameters else 0.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything llmtune knows about a model without loading its weights."""

    path: str
    shard_paths: tuple[str, ...]
    file_bytes: int
    gguf_version: int
    metadata: dict[str, Value]
    metadata_types: dict[str, int]
    tensors: tuple[TensorInfo, ...]
    header_bytes: int
    warnings: tuple[str, ...] = field(default=())

    # ---- identity -------------------------------------------------------
    @property
    def architecture(self) -> str:
        return self._str("general.architecture") or "unknown"

    @property
    def name(self) -> str:
        name = self._str("general.name")
        if name:
            return name
        base = os.path.basename(self.path.split("?", 1)[0])
        return _SPLIT_RE.sub(r"\g<prefix>", base).removesuffix(".gguf")

    @property
    def file_type(self) -> int:
        """``general.file_type``, or llama.cpp's guess from the tensor types."""
        value = self.metadata.get("general.file_type")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        cached = self.__dict__.get("_guessed_file_type")
        if cached is None:
            cached = guess_file_type(self.tensors) | FILE_TYPE_GUESSED
            object.__setattr__(self, "_guessed_file_type", cached)
        return int(cached)

    @property
    def file_type_name(self) -> str:
        return file_type_name(self.file_type)

    # ---- hyper-parameters -----------------------------------------------
    def key(self, suffix: str) -> str:
        return f"{self.architecture}.{suffix}"

    def arch_value(self, suffix: str) -> Value | None:
        return self.metadata.get(self.key(suffix))

    def arch_int(self, suffix: str, default: int = 0) -> int:
        value = self.arch_value(suffix)
        number = _as_int(value)
        if number is not None:
            return number
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            return max(int(v) for v in value)  # type: ignore[arg-type]
        return default

    def arch_float(self, suffix: str, default: float = 0.0) -> float:
        value = self.arch_value(suffix)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return default

    def per_layer(self, suffix: str, default: int = 0) -> tuple[int, ...]:
        """A hyper-parameter that may be one number or one per layer."""
        value = self.arch_value(suffix)
        n = self.n_layer
        if isinstance(value, list):
            numbers = [number for v in value if (number := _as_int(v)) is not None]
            if len(numbers) >= n:
                return tuple(numbers[:n])
            fill = numbers[-1] if numbers else default
            return tuple(numbers + [fill] * (n - len(numbers)))
        number = _as_int(value) if not isinstance(value, bool) else None
        if number is not None:
            return (number,) * n
        return (default,) * n

    @property
    def n_layer(self) -> int:
        count = self.arch_int("block_count")
        if count:
            return count
        # Every per-layer value asks for this: count the tensors' layers once.
        cached = self.__dict__.get("_n_layer_from_tensors")
        if cached is None:
            indices = [int(m.group(1)) for t in self.tensors if (m := _LAYER_RE.match(t.name))]
            cached = max(indices) + 1 if indices else 0
            object.__setattr__(self, "_n_layer_from_tensors", cached)
        return int(cached)

    @property
    def n_embd(self) -> int:
        return self.arch_int("embedding_length")

    @property
    def n_head_per_layer(self) -> tuple[int, ...]:
        return self.per_layer("attention.head_count")

    @property
    def n_head_kv_per_layer(self) -> tuple[int, ...]:
        # llama.cpp: head_count_kv defaults to head_count (no GQA).
        if self.arch_value("attention.head_count_kv") is None:
            return self.n_head_per_layer
        return self.per_layer("attention.head_count_kv")

    @property
    def n_head(self) -> int:
        return max(self.n_head_per_layer, default=0)

    @property
    def n_head_kv(self) -> int:
        return max(self.n_head_kv_per_layer, default=0)

    @property
    def n_ff_per_layer(self) -> tuple[int, ...]:
        return self.per_layer("feed_forward_length")

    @property
    def n_embd_head_k(self) -> int:
        """Key length per head (``attention.key_length``, else n_embd / n_head)."""
        explicit = self.arch_int("attention.key_length")
        if explicit:
            return explicit
        return self.n_embd // self.n_head if self.n_head else 0

    @property
    def n_embd_head_v(self) -> int:
        explicit = self.arch_int("attention.value_length")
        if explicit:
            return explicit
        return self.n_embd // self.n_head if self.n_head else 0

    @property
    def n_ctx_train(self) -> int:
        return self.arch_int("context_length")

    @property
    def n_expert(self) -> int:
        return self.arch_int("expert_count")

    @property
    def n_expert_used(self) -> int:
        return self.arch_int("expert_used_count")

    @property
    def n_ff_exp(self) -> int:
        return self.arch_int("expert_feed_forward_length")

    @property
    def sliding_window(self) -> int:
        return self.arch_int("attention.sliding_window")

    @property
    def swa_window(self) -> int:
        """The sliding window in tokens: the file's, else the architecture's default."""
        return self.sliding_window or SWA_PATTERNS.get(self.architecture, (0, False, 0))[2]

    @property
    def swa_layers(self) -> tuple[bool, ...]:
        """Which layers attend through the sliding window (llama_hparams::set_swa_pattern):
        ``attention.sliding_window_pattern`` as a per-layer array or a period, else
        the architecture's own pattern."""
        n = self.n_layer
        arch = self.architecture
        explicit = self.arch_value("attention.sliding_window_pattern")
        if isinstance(explicit, list) and explicit and all(isinstance(v, bool) for v in explicit):
            flags = [bool(v) for v in explicit][:n]
            return tuple(flags + [False] * (n - len(flags)))
        if arch not in SWA_PATTERNS:
            return (False,) * n
        period, dense_first, _ = SWA_PATTERNS[arch]
        if arch in _SWA_NEEDS_WINDOW and not self.swa_window:
            return (False,) * n
        if isinstance(explicit, int) and not isinstance(explicit, bool):
            period = explicit
        if period <= 0:
            return (True,) * n
        if dense_first:
            return tuple(il % period != 0 for il in range(n))
        return tuple(il % period < period - 1 for il in range(n))

    @property
    def kv_lora_rank(self) -> int:
        return self.arch_int("attention.kv_lora_rank")

    @property
    def q_lora_rank(self) -> int:
        return self.arch_int("attention.q_lora_rank")

    @property
    def ssm_state_size(self) -> int:
        return self.arch_int("ssm.state_size")

    @property
    def ssm_inner_size(self) -> int:
        return self.arch_int("ssm.inner_size")

    @property
    def ssm_conv_kernel(self) -> int:
        return self.arch_int("ssm.conv_kernel")

    @property
    def n_vocab(self) -> int:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, (list, GGUFArray)):
            return tokens.length if isinstance(tokens, GGUFArray) else len(tokens)
        explicit = self.arch_int("vocab_size")
        if explicit:
            return explicit
        for t in self.tensors:
            if t.name == "token_embd.weight" and len(t.shape) >= 2:
                return t.shape[1]
        return 0

    @property
    def tokenizer_model(self) -> str:
        return self._str("tokenizer.ggml.model")

    @property
    def chat_template(self) -> str:
        return self._str("tokenizer.chat_template")

    # ---- tensors --------------------------------------------------------
    @property
    def parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def layers(self) -> tuple[LayerGroup, ...]:
        return self._groups()[1]

    @property
    def input_tensors(self) -> tuple[TensorInfo, ...]:
        return self._groups()[0]

    @property
    def output_tensors(self) -> tuple[TensorInfo, ...]:
        return self._groups()[2]

    @property
    def other_tensors(self) -> tuple[TensorInfo, ...]:
        return self._groups()[3]

    def _groups(
        self,
    ) -> tuple[
        tuple[TensorInfo, ...],
        tuple[LayerGroup, ...],
        tuple[TensorInfo, ...],
        tuple[TensorInfo, ...],
    ]:
        cached = self.__dict__.get("_groups_cache")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        inputs: list[TensorInfo] = []
        outputs: list[TensorInfo] = []
        others: list[TensorInfo] = []
        per_layer: dict[int, list[TensorInfo]] = {}
        for t in self.tensors:
            m = _LAYER_RE.match(t.name)
            if m:
                per_layer.setdefault(int(m.group(1)), []).append(t)
            elif t.name.startswith(_INPUT_PREFIXES):
                inputs.append(t)
            elif t.name.startswith(_OUTPUT_PREFIXES):
                outputs.append(t)
            else:
                others.append(t)
        n = max(self.n_layer, max(per_layer, default=-1) + 1)
        layers = tuple(LayerGroup(i, tuple(per_layer.get(i, ()))) for i in range(n))
        result = (tuple(inputs), layers, tuple(outputs), tuple(others))
        object.__setattr__(self, "_groups_cache", result)
        return result

    def type_stats(self) -> dict[str, TypeStats]:
        """Tensors, parameters and bytes per ggml type, largest first."""
        counts: dict[str, list[int]] = {}
        for t in self.tensors:
            entry = counts.setdefault(t.type_name, [0, 0, 0])
            entry[0] += 1
            entry[1] += t.n_elements
            entry[2] += t.nbytes
        ordered = sorted(counts.items(), key=lambda kv: -kv[1][2])
        return {name: TypeStats(c[0], c[1], c[2]) for name, c in ordered}

    @property
    def bits_per_weight(self) -> float:
        p = self.parameters
        return self.tensor_bytes * 8 / p if p else 0.0

    def _str(self, key: str) -> str:
        value = self.metadata.get(key)
        return value if isinstance(value, str) else ""


def guess_file_type(tensors: Sequence[TensorInfo]) -> int:
    """llama.cpp's guess when ``general.file_type`` is absent: the type held by
    the most tensors, counted in name order with the first to reach the maximum
    winning (llama_model_loader's constructor, ``type_max``)."""
    counts: dict[int, int] = {}
    best_count = 0
    best_type = 0  # GGML_TYPE_F32
    for t in sorted(tensors, key=lambda t: t.name):
        counts[t.ggml_type] = counts.get(t.ggml_type, 0) + 1
        if counts[t.ggml_type] > best_count:
            best_count = counts[t.ggml_type]
            best_type = t.ggml_type
    name = GGML_TYPES[best_type].name if best_type in GGML_TYPES else ""
    # K-quants map to their _M mixes, as in llama_model_loader.
    by_name = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "F32": "F32"}
    return FILE_TYPE_BY_NAME.get(by_name.get(name, name), 0)


def split_shard_paths(path: str) -> tuple[str, ...] | None:
    """All shard paths of a split model named like llama.cpp's ``llama_split_path``
    (``prefix-00001-of-00003.gguf``), or None when the name is not a shard's."""
    base = os.path.basename(path)
    m = _SPLIT_RE.match(base)
    if not m:
        return None
    count = int(m.group("count"))
    if count < 1:
        return None
    folder = os.path.dirname(path)
    prefix = m.group("prefix")
    return tuple(
        os.path.join(folder, f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    )


def _meta_int(gf: GGUFFile, key: str) -> int | None:
    value = gf.metadata.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def read_spec(path: str | os.PathLike[str], allow_partial: bool = False) -> ModelSpec:
    """Read a model (every shard of a split model) into a :class:`ModelSpec`.

    Shard paths are derived from the file name, never from metadata, so a
    crafted file cannot point the reader outside its folder. Any shard may be
    given; reading starts from the first.
    """
    path = os.fspath(path)
    opened = read_gguf(path)
    shard_paths: tuple[str, ...] = (path,)
    files = [opened]
    split_count = _meta_int(opened, "split.count")
    if split_count is not None and split_count > 1:
        derived = split_shard_paths(path)
        if derived is None:
            raise GGUFError(
                f"this is one of {split_count} shards, but its name does not follow "
                "'name-00001-of-0000N.gguf', so the others cannot be found",
                path,
            )
        if len(derived) != split_count:
            raise GGUFError(
                f"the file name says {len(derived)} shards but split.count says {split_count}",
                path,
            )
        opened_no = _shard_number(path)
        if not 1 <= opened_no <= split_count:
            raise GGUFError(
                f"the file name says shard {opened_no} of {split_count}, which does not exist",
                path,
            )
        tensors_count = _meta_int(opened, "split.tensors.count")
        files = []
        for i, shard_path in enumerate(derived):
            if i == opened_no - 1:
                gf = dataclasses.replace(
                    opened, tensors=tuple(dataclasses.replace(t, shard=i) for t in opened.tensors)
                )
            else:
                if not os.path.exists(shard_path):
                    raise GGUFError(f"shard {i + 1} of {split_count} is missing", shard_path)
                gf = read_gguf(shard_path, shard=i)
            check_shard(gf, i, split_count, tensors_count)
            files.append(gf)
        shard_paths = derived
    return spec_from_files(files, shard_paths, allow_partial)


def spec_from_files(
    files: Sequence[GGUFFile], shard_paths: tuple[str, ...], allow_partial: bool = False
) -> ModelSpec:
    """One ModelSpec from the headers of a model's files (its shards, in order),
    read from disk or over HTTP: the same checks whichever way they came."""
    first = files[0]
    split_count = _meta_int(first, "split.count")
    tensors = tuple(t for gf in files for t in gf.tensors)
    expected = _meta_int(first, "split.tensors.count")
    if expected is not None and split_count and split_count > 1 and expected != len(tensors):
        raise GGUFError(
            f"the shards hold {len(tensors)} tensors but split.tensors.count says {expected}",
            first.path,
        )
    warnings: list[str] = []
    for gf in files:
        warnings.extend(gf.warnings)
        missing = gf.missing_bytes
        if missing:
            message = (
                f"tensor data ends at byte {gf.data_end:,} but the file has {gf.file_bytes:,}: "
                f"{missing:,} bytes are missing (an incomplete download?)"
            )
            if not allow_partial:
                raise GGUFError(message, gf.path)
            warnings.append(message)
    spec = ModelSpec(
        path=shard_paths[0],
        shard_paths=shard_paths,
        file_bytes=sum(gf.file_bytes for gf in files),
        gguf_version=first.version,
        metadata=first.metadata,
        metadata_types=first.metadata_types,
        tensors=tensors,
        header_bytes=sum(gf.header_bytes for gf in files),
        warnings=tuple(warnings),
    )
    _check_layer_count(spec)
    return spec


def _shard_number(path: str) -> int:
    """The shard's number in its file name (1 for the first), 0 if none."""
    m = _SPLIT_RE.match(os.path.basename(path))
    return int(m.group("no")) if m else 0


def check_shard(gf: GGUFFile, index: int, split_count: int, tensors_count: int | None) -> None:
    """Refuse a shard whose split keys say it belongs elsewhere."""
    count = _meta_int(gf, "split.count")
    if count != split_count:
        says = "has no split.count" if count is None else f"says split.count {count}"
        raise GGUFError(
            f"shard {index + 1} {says}, but the model has {split_count} shards: "
            "shards of different models?",
            gf.path,
        )
    no = _meta_int(gf, "split.no")
    if no is not None and no != index:
        raise GGUFError(
            f"shard {index + 1} says split.no {no}, expected {index} (shards renamed?)", gf.path
        )
    total = _meta_int(gf, "split.tensors.count")
    if total != tensors_count:
        raise GGUFError(
            f"shard {index + 1} says split.tensors.count {total}, the shard given says "
            f"{tensors_count}: shards of different models?",
            gf.path,
        )


def _check_layer_count(spec: ModelSpec) -> None:
    raw = spec.arch_value("block_count")
    # A float too large for _as_int still names an impossible layer count.
    block_count: float = raw if isinstance(raw, float) else spec.arch_int("block_count")
    if not 0 <= block_count <= MAX_LAYERS:
        raise GGUFError(
            f"{spec.key('block_count')} is {block_count:,}; llama.cpp allows 0 to "
            f"{MAX_LAYERS} layers",
            f"{spec.path}, key '{spec.key('block_count')}'",
        )
    for t in spec.tensors:
        m = _LAYER_RE.match(t.name)
        if m and int(m.group(1)) >= MAX_LAYERS:
            raise GGUFError(
                f"tensor '{t.name}' is in layer {int(m.group(1)):,}; llama.cpp allows "
                f"{MAX_LAYERS} layers",
                spec.shard_paths[t.shard] if t.shard < len(spec.shard_paths) else spec.path,
            )

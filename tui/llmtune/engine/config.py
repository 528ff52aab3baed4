"""RunConfig: every llama.cpp setting the worker passes, explicitly, to the C API.

One RunConfig describes one model load plus one context: the user's
:class:`~llmtune.fit.settings.Settings` (what ``fit.plan`` describes, with
llama-server's defaults) and the :class:`~llmtune.fit.settings.Extras` only
the worker sets. The worker never relies on the C API's own defaults (which
differ: n_batch 512, ``swa_full`` on): it sets every ``llama_model_params`` and
``llama_context_params`` field the options table (:mod:`llmtune.fit.options`)
names, by :meth:`RunConfig.model_params` and :meth:`RunConfig.context_params`
(llama-cpp-python 0.3.36 has no ``use_mmap``/``use_mlock``: they are one
``load_mode``). Two fields are C arrays the worker builds itself:
``tensor_split`` (a float array of ``llama_max_devices()``) and
``tensor_buft_overrides``, below.

Tensor placement (:func:`tensor_overrides`): the layer overflow llama.cpp's fit
chooses (``-ot``, :mod:`llmtune.fit.overflow`), then ``--n-cpu-moe N`` /
``--cpu-moe`` with the patterns of llama.cpp's ``common/common.h``
(``blk\\.N\\.ffn_(up|down|gate)_(ch|)exps``). The binding declares
``tensor_buft_overrides`` as an untyped pointer ("unused"), so the worker builds
the NULL-terminated ``llama_model_tensor_buft_override`` array itself, each
buffer type found by its name among the devices' (``engine.ggml_rpc.buffer_types``,
as llama-server resolves ``-ot``). If the ggml symbols cannot be found the worker
loads without the overrides and says so in the log. Other ``--override-tensor``
rules are not exposed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from llmtune.fit.options import c_params
from llmtune.fit.overflow import CPU_BUFT, override_list
from llmtune.fit.settings import (
    CACHE_TYPE_IDS,
    FLASH_ATTN_IDS,
    SPLIT_MODE_IDS,
    Extras,
    Settings,
)

# common/common.h: LLM_FFN_EXPS_REGEX
FFN_EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"

OomStage = Literal["load", "context"]
_SETTINGS_FIELDS = frozenset(f.name for f in fields(Settings))
_EXTRAS_FIELDS = frozenset(f.name for f in fields(Extras))


def moe_override_patterns(n_cpu_moe: int, n_layer: int | None = None) -> tuple[str, ...]:
    """Tensor-name patterns whose tensors stay in host memory (llama-server's --n-cpu-moe).

    -1 (``--cpu-moe``) keeps every expert on the CPU; N keeps those of layers 0..N-1.
    """
    if n_cpu_moe == 0:
        return ()
    if n_cpu_moe < 0:
        return (FFN_EXPS_REGEX,)
    count = n_cpu_moe if n_layer is None else min(n_cpu_moe, n_layer)
    return tuple(rf"blk\.{i}{FFN_EXPS_REGEX}" for i in range(count))


def tensor_overrides(s: Settings) -> tuple[tuple[str, str], ...]:
    """(tensor pattern, buffer type name) in llama.cpp's order, the first match
    winning (llama-model-loader.cpp): the fit's layer overflow, then --n-cpu-moe's."""
    cpu = tuple((pattern, CPU_BUFT) for pattern in moe_override_patterns(s.n_cpu_moe))
    return override_list(s.layer_overflow) + cpu


@dataclass(frozen=True)
class RunConfig:
    """One model load and one context, as the worker asks llama.cpp for them."""

    model_path: str
    settings: Settings = field(default_factory=Settings)
    extras: Extras = field(default_factory=Extras)
    # Test hook: limit the worker's address space (RLIMIT_AS) to what it uses
    # just before ``oom_stage`` plus this many bytes, to simulate running out of memory.
    oom_headroom_bytes: int | None = None
    oom_stage: OomStage = "context"

    @classmethod
    def from_settings(
        cls,
        model_path: str | os.PathLike[str],
        settings: Settings,
        extras: Extras | None = None,
    ) -> RunConfig:
        """The configuration ``fit.plan(spec, devices, settings)`` describes."""
        return cls(str(Path(model_path)), settings, extras if extras is not None else Extras())

    @classmethod
    def of(cls, model_path: str | os.PathLike[str], **values: Any) -> RunConfig:
        """A RunConfig from Settings, Extras and RunConfig fields by name (tests, benches):
        ``RunConfig.of(path, n_ctx=256, threads=1, use_mlock=True)``."""
        own = {k: v for k, v in values.items() if k not in _SETTINGS_FIELDS | _EXTRAS_FIELDS}
        return cls(
            str(Path(model_path)),
            Settings(**{k: v for k, v in values.items() if k in _SETTINGS_FIELDS}),
            Extras(**{k: v for k, v in values.items() if k in _EXTRAS_FIELDS}),
            **own,
        )

    def validate(self) -> None:
        """Raise ConfigError for values llama.cpp would refuse or misread."""
        from llmtune.errors import ConfigError

        s, x = self.settings, self.extras
        for name, value in (("K", s.cache_type_k), ("V", s.cache_type_v)):
            if value not in CACHE_TYPE_IDS:
                raise ConfigError(f"llama.cpp has no {name} cache type {value!r}", "RunConfig")
        if s.flash_attn not in FLASH_ATTN_IDS:
            raise ConfigError(f"flash attention is on, off or auto, not {s.flash_attn!r}")
        if s.split_mode not in SPLIT_MODE_IDS:
            raise ConfigError(f"split mode is layer, row or none, not {s.split_mode!r}")
        limits: tuple[tuple[str, int, int], ...] = (
            ("n_ctx", s.n_ctx, 0),
            ("n_batch", s.n_batch, 1),
            ("n_ubatch", s.n_ubatch, 1),
            ("n_seq_max", s.n_parallel, 1),
            ("threads", s.threads, 0),
            ("threads_batch", x.threads_batch, 0),
        )
        for field_name, number, low in limits:
            if number < low:
                raise ConfigError(f"{field_name} must be at least {low}, not {number}", "RunConfig")

    def model_params(self) -> dict[str, Any]:
        """The ``llama_model_params`` fields to set, by name (not ``tensor_split``)."""
        return c_params(self.settings, self.extras, "model")

    def context_params(self) -> dict[str, Any]:
        """The ``llama_context_params`` fields to set, by name."""
        return c_params(self.settings, self.extras, "context")

    def command_line(self) -> list[str]:
        """The llama-server arguments (after the program name) for the same configuration.

        Built by :func:`llmtune.fit.commandline.llama_args`, llmtune's one builder.
        """
        from llmtune.fit.commandline import llama_args

        s = self.settings
        return llama_args(self.model_path, s, s.n_gpu_layers, s.n_ctx, self.extras)

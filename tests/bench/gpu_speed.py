"""Predicted against published llama-bench speeds on GPUs, per device class.

Baseline: the published results in ``tests/bench/published_llama_bench.csv``
(one GPU, every layer on it), each with its source, its prompt and generation
tests (pp512, tg128, ...), n_ubatch and flash attention as run. Each row is
planned with llmtune on a synthetic sparse GGUF of the row's shape (Llama 2 7B,
Llama 3 8B/70B, Mistral 7B at Q4_0, Q4_K_M, Q8_0 or F16, the tensor types
llama.cpp's quantizer gives them), the GPU's profile and the row's settings,
and printed as predicted/published. llmtune predicts a 512-token prompt, so pp
is compared only on pp512 rows; tg on any tgN with N <= 512. A row whose GPU
has no profile is skipped and counted.

Targets (issue 16): generation within 25% for at least 90% of the rows, prompt
processing within 50% for at least 80% (of the rows compared, overall, per
class and per source). ``--fit`` searches each class's three
figures (bandwidth efficiency and per-layer cost on tg, compute efficiency on
pp) for the least squared log error over that class's rows and prints them:
fit.speed.CLASS_SPEEDS holds what it printed.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gguf import GGMLQuantizationType as Q  # noqa: E402

from llmtune.fit import speed as speed_module  # noqa: E402
from llmtune.fit.plan import plan  # noqa: E402
from llmtune.fit.settings import Settings  # noqa: E402
from llmtune.hardware.host import host_device  # noqa: E402
from llmtune.hardware.profiles import parse_gpu_spec  # noqa: E402
from llmtune.model import ModelSpec, read_spec  # noqa: E402
from llmtune.units import GIB  # noqa: E402
from synth import Tensor, write_gguf  # noqa: E402

TABLE = Path(__file__).with_name("published_llama_bench.csv")
TG_TARGET, TG_SHARE = 0.25, 0.90
PP_TARGET, PP_SHARE = 0.50, 0.80
# name: layers, embedding, heads, KV heads, FFN, vocabulary (the models' config.json).
SHAPES = {
    "llama3-8b": (32, 4096, 32, 8, 14336, 128256),
    "llama3-70b": (80, 8192, 64, 8, 28672, 128256),
    "llama2-7b": (32, 4096, 32, 32, 11008, 32000),
    "mistral-7b": (32, 4096, 32, 8, 14336, 32768),
}
QUANTS = ("Q4_0", "Q4_K_M", "Q8_0", "F16")
PP_TOKENS = speed_module.PROMPT_TOKENS  # the prompt llmtune predicts (pp512)
MAX_TG_TOKENS = 512  # generation tests compared as they are, up to tg512
HOST = host_device(ram_bytes=512 * GIB, bandwidth_gbps=51.2)


@dataclass(frozen=True)
class Row:
    gpu: str
    profile: str  # empty: no profile, skipped and counted
    model: str
    quant: str
    n_ubatch: int
    flash_attn: bool
    pp_tokens: int  # 0: no prompt test published
    pp_ts: float
    tg_tokens: int
    tg_ts: float
    backend: str
    source: str
    date: str
    note: str

    @property
    def settings(self) -> Settings:
        """llama-bench's settings for the row; the context is the test's length."""
        return Settings(n_ctx=512, n_gpu_layers=-1, n_ubatch=self.n_ubatch,
                        n_batch=max(2048, self.n_ubatch),
                        flash_attn="on" if self.flash_attn else "off")  # fmt: skip

    @property
    def pp_compared(self) -> bool:
        return self.pp_tokens == PP_TOKENS and self.pp_ts > 0

    @property
    def tg_compared(self) -> bool:
        return 0 < self.tg_tokens <= MAX_TG_TOKENS and self.tg_ts > 0


def read_rows() -> list[Row]:
    lines = [ln for ln in TABLE.read_text().splitlines() if ln and not ln.startswith("#")]
    rows = [
        Row(
            r["gpu"],
            r["profile"],
            r["model"],
            r["quant"],
            int(r["n_ubatch"]),
            {"0": False, "1": True}[r["flash_attn"]],
            int(r["pp_tokens"] or 0),
            float(r["pp_ts"] or 0),
            int(r["tg_tokens"]),
            float(r["tg_ts"]),
            r["backend"],
            r["source"],
            r["date"],
            r["note"],
        )  # fmt: skip
        for r in csv.DictReader(lines)
    ]
    for r in rows:
        assert r.model in SHAPES, f"{r.gpu}: no synthetic shape {r.model!r}"
        assert r.quant in QUANTS, f"{r.gpu}: no synthetic quant {r.quant!r}"
    return rows


def _more_bits(i: int, n: int) -> bool:
    """llama-quant.cpp ``use_more_bits``: the first and last eighth and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def synthetic(folder: Path, model: str, quant: str) -> ModelSpec:
    """A sparse GGUF of the model's shape at ``quant`` (Q4_K_M: Q4_K, with Q6_K for
    attn_v and ffn_down where ``use_more_bits`` and for the output; Q4_0: Q4_0 with
    a Q6_K output; Q8_0 and F16 throughout, as llama-quant.cpp
    ``llama_tensor_get_type`` gives them)."""
    n_layer, n_embd, n_head, n_kv, n_ff, n_vocab = SHAPES[model]
    kv_dim = n_embd // n_head * n_kv
    base = {"F16": Q.F16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0, "Q4_K_M": Q.Q4_K}[quant]
    more = Q.Q6_K if quant == "Q4_K_M" else base
    out = base if quant in ("F16", "Q8_0") else Q.Q6_K
    tensors = [Tensor("token_embd.weight", (n_embd, n_vocab), base)]
    for i in range(n_layer):
        b = f"blk.{i}."
        tensors += [
            Tensor(b + "attn_norm.weight", (n_embd,)),
            Tensor(b + "attn_q.weight", (n_embd, n_embd), base),
            Tensor(b + "attn_k.weight", (n_embd, kv_dim), base),
            Tensor(b + "attn_v.weight", (n_embd, kv_dim), more if _more_bits(i, n_layer) else base),
            Tensor(b + "attn_output.weight", (n_embd, n_embd), base),
            Tensor(b + "ffn_norm.weight", (n_embd,)),
            Tensor(b + "ffn_gate.weight", (n_embd, n_ff), base),
            Tensor(b + "ffn_up.weight", (n_embd, n_ff), base),
            Tensor(b + "ffn_down.weight", (n_ff, n_embd), more if _more_bits(i, n_layer) else base),
        ]
    tensors += [
        Tensor("output_norm.weight", (n_embd,)),
        Tensor("output.weight", (n_embd, n_vocab), out),
    ]
    kv = [
        ("general.name", f"{model} {quant}"),
        ("llama.block_count", n_layer),
        ("llama.context_length", 8192),
        ("llama.embedding_length", n_embd),
        ("llama.feed_forward_length", n_ff),
        ("llama.attention.head_count", n_head),
        ("llama.attention.head_count_kv", n_kv),
        ("llama.attention.layer_norm_rms_epsilon", 1e-5),
        ("llama.rope.dimension_count", n_embd // n_head),
        ("llama.vocab_size", n_vocab),
    ]
    (path,) = write_gguf(folder / f"{model}-{quant}.gguf", kv, tensors)
    return read_spec(path)


def predict(spec: ModelSpec, row: Row) -> tuple[float, float]:
    p = plan(spec, [parse_gpu_spec(row.profile), HOST], row.settings)
    assert p.n_gpu_layers == p.n_layer + 1  # every layer on the GPU
    return p.predicted.tg_tokens_per_s, p.predicted.pp_tokens_per_s


def _class_of(row: Row) -> str:
    return speed_module.device_class(parse_gpu_spec(row.profile))


def _within(ratios: list[float], target: float) -> int:
    return sum(abs(r - 1) <= target for r in ratios)


def _share(ok: int, n: int) -> str:
    return f"{ok}/{n}" + (f" ({ok / n:.0%})" if n else "")


def _log_error(pairs: list[tuple[float, float]]) -> float:
    return sum(math.log(p / m) ** 2 for p, m in pairs)


def fit(rows: list[Row], specs: dict[tuple[str, str], ModelSpec]) -> None:
    """Per class: the (bandwidth efficiency, per-layer cost) with the least squared
    log error on tg, then the compute efficiency with the least on pp."""
    classes = sorted({_class_of(r) for r in rows})
    for cls in classes:
        mine = [r for r in rows if _class_of(r) == cls]
        tg_rows = [r for r in mine if r.tg_compared]
        pp_rows = [r for r in mine if r.pp_compared and r.note != "suspect"]
        original = speed_module.CLASS_SPEEDS[cls]
        best: tuple[float, float, float] | None = None
        effs = [e / 100 for e in range(30, 101, 5)]
        costs = [c * 1e-6 for c in range(0, 401, 10)]
        for e, c in itertools.product(effs, costs):
            speed_module.CLASS_SPEEDS[cls] = replace(original, bandwidth_efficiency=e,
                                                     layer_overhead_s=c)  # fmt: skip
            err = _log_error([(predict(specs[r.model, r.quant], r)[0], r.tg_ts) for r in tg_rows])
            if best is None or err < best[0]:
                best = (err, e, c)
        assert best is not None
        tg_fit = replace(original, bandwidth_efficiency=best[1], layer_overhead_s=best[2])
        best_pp: tuple[float, float] | None = None
        for k in range(10, 101, 2):
            speed_module.CLASS_SPEEDS[cls] = replace(tg_fit, compute_efficiency=k / 100)
            err = _log_error([(predict(specs[r.model, r.quant], r)[1], r.pp_ts) for r in pp_rows])
            if best_pp is None or err < best_pp[0]:
                best_pp = (err, k / 100)
        assert best_pp is not None
        speed_module.CLASS_SPEEDS[cls] = original
        print(f"  {cls:<18} {len(mine):2} rows: bandwidth efficiency {best[1]:.2f}, "
              f"per-layer {best[2] * 1e6:.0f} us, compute efficiency {best_pp[1]:.2f}")  # fmt: skip


def _summary(label: str, tg: list[float], pp: list[float]) -> str:
    return (f"  {label:<22} tg within {TG_TARGET:.0%} {_share(_within(tg, TG_TARGET), len(tg)):<12}"
            f" pp within {PP_TARGET:.0%} {_share(_within(pp, PP_TARGET), len(pp))}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fit", action="store_true", help="search each class's figures and print them")
    args = ap.parse_args()
    table = read_rows()
    rows = [r for r in table if r.profile]
    skipped = [r for r in table if not r.profile]
    print(f"baseline: {len(table)} published llama-bench rows ({TABLE.name}), "
          f"{len(skipped)} skipped (no profile); targets: tg within {TG_TARGET:.0%} for "
          f"{TG_SHARE:.0%}, pp{PP_TOKENS} within {PP_TARGET:.0%} for {PP_SHARE:.0%}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        specs = {(r.model, r.quant): synthetic(Path(tmp), r.model, r.quant) for r in rows}
        for (model, quant), spec in sorted(specs.items()):
            print(f"  synthetic {model} {quant}: {spec.tensor_bytes / GIB:.2f} GiB")
        if args.fit:
            print("fitted per class (least squared log error; pp leaves out 'suspect' rows):")
            fit(rows, specs)
        tg_all: list[float] = []
        pp_all: list[float] = []
        by_class: dict[str, tuple[list[float], list[float]]] = {}
        by_source: dict[str, tuple[list[float], list[float]]] = {}
        worst: list[tuple[float, str]] = []
        print(f"  {'GPU':<36}{'model':<19}{'class':<18}{'tests':<13}"
              f"{'tg pred/pub':>12}{'pp pred/pub':>12}  source")  # fmt: skip
        for r in rows:
            tg, pp = predict(specs[r.model, r.quant], r)
            cls = _class_of(r)
            groups = (by_class.setdefault(cls, ([], [])), by_source.setdefault(r.source, ([], [])))
            tg_text = pp_text = "-"
            what = f"{r.gpu} {r.model} {r.quant}"
            if r.tg_compared:
                tg_ratio = tg / r.tg_ts
                tg_text = f"{tg_ratio:.2f}"
                tg_all.append(tg_ratio)
                for g in groups:
                    g[0].append(tg_ratio)
                worst.append((abs(math.log(tg_ratio)), f"tg {tg_ratio:.2f} {what}"))
            if r.pp_compared:
                pp_ratio = pp / r.pp_ts
                pp_text = f"{pp_ratio:.2f}"
                pp_all.append(pp_ratio)
                for g in groups:
                    g[1].append(pp_ratio)
                worst.append((abs(math.log(pp_ratio)), f"pp {pp_ratio:.2f} {what}"))
            tests = f"pp{r.pp_tokens or '-'} tg{r.tg_tokens}" + (" fa" if r.flash_attn else "")
            flag = f"  ({r.note})" if r.note == "suspect" else ""
            print(f"  {r.gpu[:35]:<36}{r.model + ' ' + r.quant:<19}{cls:<18}{tests:<13}"
                  f"{tg_text:>12}{pp_text:>12}  {r.source}{flag}")  # fmt: skip
    for r in skipped:
        print(f"  {r.gpu[:35]:<36}{r.model + ' ' + r.quant:<19}{'(no profile)':<18}"
              f"{'':<13}{'-':>12}{'-':>12}  {r.source}")  # fmt: skip
    print("per class:")
    for cls, (tg_r, pp_r) in sorted(by_class.items()):
        print(_summary(cls, tg_r, pp_r))
    print("per source:")
    for source, (tg_r, pp_r) in sorted(by_source.items()):
        print(_summary(source, tg_r, pp_r))
    print(f"skipped: {len(skipped)} rows with no profile ("
          + ", ".join(sorted({r.gpu for r in skipped})) + ")")  # fmt: skip
    print("worst: " + "; ".join(text for _, text in sorted(worst, reverse=True)[:4]))
    tg_ok, pp_ok = _within(tg_all, TG_TARGET), _within(pp_all, PP_TARGET)
    tg_n, pp_n = len(tg_all), len(pp_all)
    tg_share, pp_share = tg_ok / tg_n, pp_ok / pp_n
    verdict = "PASS" if tg_share >= TG_SHARE and pp_share >= PP_SHARE else "MISS"
    print(f"gpu speed vs published llama-bench: tg within {TG_TARGET:.0%} for {tg_share:.0%} "
          f"({tg_ok}/{tg_n}, target {TG_SHARE:.0%}), pp within {PP_TARGET:.0%} for {pp_share:.0%} "
          f"({pp_ok}/{pp_n}, target {PP_SHARE:.0%}) {verdict}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

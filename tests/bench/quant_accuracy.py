"""The quantization what-if against llama.cpp: model x file type, predicted vs llama.cpp.

Rows marked ``file``: a small F16 model with real data (``tests/synth_quant.py``)
quantized by ``llama_model_quantize``; llama.cpp's number is the size of the
file it wrote, and the mismatches count tensors whose type differs from
llmtune's prediction. Rows marked ``dry``: header-only models with real shapes
(Llama-2 70B and 13B), for which llama.cpp's dry run reports the tensor data
size (``quant size``, printed to 0.01 MiB) and each tensor's type; llmtune's
number is then its tensor data too. Families of ``tests/synth_arch.py`` are
summarised one line each (dry runs).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

here = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(here)]

from llmtune.errors import FitError  # noqa: E402
from llmtune.fit.quant import FILE_TYPES, QuantOptions, predict_tensor_types, requantize  # noqa: E402
from llmtune.model.spec import ModelSpec, read_spec  # noqa: E402
from synth import llama_like  # noqa: E402
from synth_arch import FAMILIES  # noqa: E402
from synth_quant import (  # noqa: E402
    BUILDERS,
    QuantJob,
    QuantResult,
    parse_dry_run,
    run_in_parallel,
)

MIB = 1024 * 1024
SECOND_CHILD = {"IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS"}
HEADLINE = {
    # Llama-2 shapes: (layers, n_embd, heads, KV heads, n_ff, vocab)
    "llama2-70b": (80, 8192, 64, 8, 28672, 32000),
    "llama2-13b": (40, 5120, 40, 40, 13824, 32000),
}


def _mismatches(predicted: dict[str, str], actual: dict[str, str]) -> int:
    return sum(predicted.get(name) != t for name, t in actual.items()) + sum(
        name not in actual for name in predicted
    )


def _row(model: str, ftype: str, how: str, predicted: int, actual: int, wrong: int) -> str:
    err = 100.0 * (predicted - actual) / actual if actual else 0.0
    return f"{model:<12}{ftype:<10}{how:<5}{predicted:>16,}{actual:>16,}{err:>9.3f}{wrong:>7}"


def _dry_compare(
    spec: ModelSpec, ftype: str, result: QuantResult
) -> tuple[int, int, int, bool] | str:
    """(predicted, llama.cpp, mismatches, same at llama.cpp's print precision) from a dry
    run, or why there is no row. llama.cpp prints the size in MiB with two decimals."""
    options = QuantOptions(imatrix=False)
    try:
        types = predict_tensor_types(spec, ftype, options)
    except FitError as exc:
        return "llama.cpp fails too" if not result.ok else f"llmtune: {exc.what}"
    dry = parse_dry_run(result.log)
    if not result.ok or dry.quant_mib is None:
        return "llama.cpp failed"
    predicted = requantize(spec, ftype, options).tensor_bytes
    same = f"{predicted / MIB:.2f}" == f"{dry.quant_mib:.2f}"
    return predicted, round(dry.quant_mib * MIB), _mismatches(types, dry.types), same


def main() -> int:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {date.today()}")
    print("baseline: llama_model_quantize of llama-cpp-python 0.3.36 (file size, or dry-run size)")
    print("target: within 1% for every file type; mismatches = tensors of another type")
    head = f"{'model':<12}{'ftype':<10}{'how':<5}{'llmtune B':>16}{'llama.cpp B':>16}{'err %':>9}{'types≠':>7}"
    worst = 0.0
    total_wrong = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = {kind: build(folder / f"{kind}.gguf") for kind, build in BUILDERS.items()}
        batches: list[list[QuantJob]] = [[], []]
        for kind, path in models.items():
            for name, ft in FILE_TYPES.items():
                output = str(folder / f"{kind}-{name}.gguf")
                job = QuantJob(str(path), ft.ftype, output, imatrix=ft.needs_imatrix)
                batches[name in SECOND_CHILD].append(job)
        headline: dict[str, Path] = {}
        for label, (n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab) in HEADLINE.items():
            (headline[label],) = llama_like(
                folder / f"{label}.gguf",
                n_layer=n_layer,
                n_embd=n_embd,
                n_head=n_head,
                n_head_kv=n_head_kv,
                n_ff=n_ff,
                n_vocab=n_vocab,
            )
        families = {
            name: build(folder / f"arch-{name}.gguf").path for name, build in FAMILIES.items()
        }
        for path in [*headline.values(), *families.values()]:
            batches[0].extend(QuantJob(str(path), ft.ftype) for ft in FILE_TYPES.values())
        results = {(r.job.model, r.job.ftype, r.job.dry_run): r for r in run_in_parallel(batches)}

        print(head)
        for kind, path in models.items():
            spec = read_spec(path)
            for name, ft in FILE_TYPES.items():
                result = results[(str(path), ft.ftype, False)]
                options = QuantOptions(imatrix=ft.needs_imatrix)
                try:
                    types = predict_tensor_types(spec, name, options)
                except FitError:
                    verdict = "llama.cpp fails too" if not result.ok else "llmtune fails alone"
                    print(f"{kind:<12}{name:<10}file  no fallback for the rows: {verdict}")
                    continue
                if not result.ok:
                    print(f"{kind:<12}{name:<10}file  llama.cpp failed: {result.crash[-200:]}")
                    total_wrong += 1
                    continue
                written = read_spec(result.job.output)
                os.remove(result.job.output)
                predicted = requantize(spec, name, options).file_bytes
                wrong = _mismatches(types, {t.name: t.type_name for t in written.tensors})
                total_wrong += wrong
                worst = max(
                    worst, abs(100.0 * (predicted - written.file_bytes) / written.file_bytes)
                )
                print(_row(kind, name, "file", predicted, written.file_bytes, wrong))
        for label, path in headline.items():
            spec = read_spec(path)
            for name, ft in FILE_TYPES.items():
                row = _dry_compare(spec, name, results[(str(path), ft.ftype, True)])
                if isinstance(row, str):
                    print(f"{label:<12}{name:<10}dry  {row}")
                    continue
                predicted, actual, wrong, same = row
                total_wrong += wrong
                if not same:
                    worst = max(worst, abs(100.0 * (predicted - actual) / actual))
                print(_row(label, name, "dry", predicted, actual, wrong))
        print()
        print("header-only families, dry runs: sizes compared at llama.cpp's 0.01 MiB precision")
        print(f"{'family':<16}{'file types':>11}{'same size':>11}{'worst err %':>13}{'types≠':>8}")
        for family, path in families.items():
            spec = read_spec(path)
            rows = [
                _dry_compare(spec, name, results[(str(path), ft.ftype, True)])
                for name, ft in FILE_TYPES.items()
            ]
            numeric = [r for r in rows if not isinstance(r, str)]
            differ = [abs(100.0 * (p - a) / a) for p, a, _, same in numeric if not same]
            family_worst = max(differ, default=0.0)
            family_wrong = sum(w for _, _, w, _ in numeric)
            same_count = sum(same for *_, same in numeric)
            worst = max(worst, family_worst)
            total_wrong += family_wrong
            print(
                f"{family:<16}{len(numeric):>11}{same_count:>11}{family_worst:>13.3f}{family_wrong:>8}"
            )
    print(
        f"worst |error| beyond llama.cpp's print precision {worst:.3f}%, type mismatches {total_wrong}"
    )
    print(f"took {time.perf_counter() - started:.1f} s")
    return 0 if worst < 1.0 and total_wrong == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""``llmtune quality`` without llama.cpp: reading llama-perplexity's output, the
source fingerprint, the kept rows, the time-left estimate and bad input."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmtune.engine import perplexity as ppl
from llmtune.engine import quality_store as store
from llmtune.engine.quality import _Clock, parse_types
from llmtune.errors import ConfigError, WorkerError

# llama-perplexity --kl-divergence on the demo's Q4_K_M against its F16 (-c 128, 4 chunks).
KLD_OUTPUT = """\
kl_divergence: computing over 4 chunks, n_ctx=128, batch_size=512, n_seq=4
chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p
   1      50.0040 ±   18.9214       0.08970 ±    0.04736       0.05258 ±    0.00487     3.375 ±  0.786 %    88.889 ±  3.991 %
   4      40.3852 ±    7.6271       0.05310 ±    0.02302       0.05585 ±    0.00370     4.957 ±  0.880 %    83.730 ±  2.330 %

====== Perplexity statistics ======
Mean PPL(Q)                   :  40.385250 ±   7.627142
Mean PPL(base)                :  38.296868 ±   7.138923
Cor(ln(PPL(Q)), ln(PPL(base))):  99.26%
Mean ln(PPL(Q)/PPL(base))     :   0.053097 ±   0.023017
====== KL divergence statistics ======
Mean    KLD:   0.055853 ±   0.003699
Maximum KLD:   0.677342
99.9%   KLD:   0.582775
99.0%   KLD:   0.246853
Median  KLD:   0.039623
====== Token probability statistics ======
RMS Δp    :  4.957 ± 0.880 %
Same top p: 83.730 ± 2.330 %
"""

BASE_OUTPUT = """\
perplexity: calculating perplexity over 4 chunks, n_ctx=128, batch_size=512, n_seq=4
[1]45.7138,[2]40.6530,[3]35.3340,
0.10.458.333 I Final estimate: PPL = 38.2968 +/- 7.13890
"""


def test_parse_kld_reads_every_statistic() -> None:
    s = ppl.parse_kld(KLD_OUTPUT)
    assert (s.ppl, s.ppl_err, s.ppl_base) == (40.38525, 7.627142, 38.296868)
    assert (s.kld_mean, s.kld_mean_err) == (0.055853, 0.003699)
    assert (s.kld_p99, s.kld_median, s.kld_max) == (0.246853, 0.039623, 0.677342)
    assert (s.same_top_pct, s.same_top_err_pct, s.rms_dp_pct) == (83.73, 2.33, 4.957)
    assert s.ln_ppl_ratio == 0.053097


def test_parse_kld_without_statistics_is_an_error() -> None:
    with pytest.raises(WorkerError, match="no KL-divergence statistics"):
        ppl.parse_kld("kl_divergence: computing over 1 chunks\n")


def test_parse_base_and_progress() -> None:
    base = ppl.parse_base(BASE_OUTPUT, 128, "t.txt")
    assert (base.ppl, base.ppl_err, base.n_chunk) == (38.2968, 7.1389, 4)
    assert (base.tokens_used, base.tokens_scored) == (512, 252)
    assert ppl.total_chunks(BASE_OUTPUT) == 4
    assert ppl.chunks_done(BASE_OUTPUT, kld=False) == 3
    assert ppl.chunks_done(KLD_OUTPUT, kld=True) == 4


def test_a_short_text_is_the_users_to_fix() -> None:
    out = "perplexity: the data file you provided tokenizes to only 90 tokens\n"
    with pytest.raises(ConfigError, match="the text is 90 tokens.*at least 256"):
        ppl.parse_base(out, 128, "t.txt")
    few = "calculating perplexity over 1 chunks, n_ctx=128\nFinal estimate: PPL = 3.0 +/- 0.1\n"
    with pytest.raises(ConfigError, match="score only 63 tokens"):
        ppl.parse_base(few, 128, "t.txt")


def test_batch_and_base_file_size() -> None:
    assert [ppl.batch_for(n) for n in (100, 128, 512, 4096)] == [500, 512, 512, 4096]
    # The file llama-perplexity wrote for the demo (49152 tokens), -c 128, 4 chunks.
    assert ppl.base_file_bytes(49152, 128, 4) == 24776692


def test_fingerprint_is_content_not_path(tmp_path: Path) -> None:
    a = tmp_path / "a.gguf"
    data = bytearray(os.urandom(9 << 20))
    a.write_bytes(data)
    b = tmp_path / "b.gguf"
    b.write_bytes(data)
    assert store.fingerprint(str(a)) == store.fingerprint(str(b))
    data[100] ^= 1  # the header
    b.write_bytes(data)
    os.utime(b, ns=(1, 1))
    assert store.fingerprint(str(a)) != store.fingerprint(str(b))
    c = tmp_path / "c.gguf"
    c.write_bytes(data + b"x")  # the size
    assert store.fingerprint(str(c)) != store.fingerprint(str(b))


def _row(name: str, kld: float, **kw: object) -> store.QualityRow:
    values: dict[str, object] = {f: 0.0 for f in store.QualityRow.__dataclass_fields__}
    values.update(file_type=name, imatrix=False, file_bytes=1, kld_mean=kld, is_source=False)
    values.update(kw)
    return store.QualityRow(**values)  # type: ignore[arg-type]


def test_rows_are_kept_and_the_latest_setting_is_shown(tmp_path: Path) -> None:
    key = store.QualityKey("f" * 32, "llama-cpp-python 0.3.36", "t" * 64, 512, 9)
    other = store.QualityKey("f" * 32, "llama-cpp-python 0.3.36", "u" * 64, 128, 4)
    store.save_rows([store.StoredRow(key, "bundled", 1.0, _row("Q8_0", 0.01))])
    store.save_rows([store.StoredRow(key, "bundled", 2.0, _row("Q4_K_M", 0.05))])
    store.save_rows([store.StoredRow(key, "bundled", 3.0, _row("Q8_0", 0.02))])  # replaces
    store.save_rows([store.StoredRow(other, "my.txt", 0.5, _row("Q2_K", 0.4))])
    rows = store.load_rows("f" * 32)
    assert sorted(r.row.file_type for r in rows) == ["Q2_K", "Q4_K_M", "Q8_0"]
    newest, by = store.latest(rows, "llama-cpp-python 0.3.36")
    assert newest is not None and newest.key == key
    assert {k: v.row.kld_mean for k, v in by.items()} == {"Q8_0": 0.02, "Q4_K_M": 0.05}
    assert store.latest(rows, "another build") == (None, {})
    store.store_path("f" * 32).write_text("{not json")
    assert store.load_rows("f" * 32) == []


def test_time_left() -> None:
    clock = _Clock(n_types=2)
    assert clock.eta("source", 0, 1.0, 0.0) is None
    assert clock.eta("source", 0, 10.0, 0.5) == pytest.approx(10.0 + 30.0 * 2)
    clock.base_s = 20.0
    clock.quantize_s.append(4.0)
    clock.measure_s.append(16.0)
    # Half of the second type's quantization done in 2 s: 2 s more, then its measure.
    assert clock.eta("quantize", 2, 2.0, 0.5) == pytest.approx(2.0 + 16.0)
    assert clock.eta("measure", 1, 8.0, 0.5) == pytest.approx(8.0 + 20.0)


def test_parse_types() -> None:
    assert parse_types("q8_0, Q4_K_M,q8_0") == ("Q8_0", "Q4_K_M")
    assert parse_types(None)[0] == "Q8_0"
    with pytest.raises(ConfigError):
        parse_types("Q9_Z")
    with pytest.raises(ConfigError):
        parse_types(" , ")


def test_bundled_text_is_a_few_thousand_words() -> None:
    text = store.load_text(None)
    assert text.name == "bundled" and 15_000 < text.bytes < 40_000
    assert math.isfinite(text.bytes)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--types", "Q9_Z"], "Q9_Z"),
        (["--ctx", "4"], "at least 8"),
        (["--text", "/nonexistent/text.txt"], "cannot read the text"),
        (["--chunks", "0"], "--chunks must be at least 1"),
    ],
)
def test_bad_input_is_one_line(
    args: list[str], words: str, demo_model: Path, tmp_path: Path
) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "llmtune.cli", "quality", str(demo_model), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("llmtune: error: ") and words in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_stale_private_folders_go(tmp_path: Path) -> None:
    from llmtune.engine.quality import PRIVATE_PREFIX, remove_stale_folders

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (tmp_path / f"{PRIVATE_PREFIX}{dead}-abc123").mkdir()
    (tmp_path / f"{PRIVATE_PREFIX}{dead}-abc123" / "Q8_0.gguf").write_bytes(b"x")
    (tmp_path / f"{PRIVATE_PREFIX}{os.getpid()}-def456").mkdir()  # a live run's
    assert remove_stale_folders(str(tmp_path)) == [f"{PRIVATE_PREFIX}{dead}-abc123"]
    assert [p.name for p in tmp_path.iterdir()] == [f"{PRIVATE_PREFIX}{os.getpid()}-def456"]

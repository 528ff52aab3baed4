"""Every fault of a remote model is one line on stderr, exit status 2, no traceback,
and nothing half-written in the header cache; no fault can hang (timeouts of 1 s)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub_server import FakeHub, hub_env, standard_hub
from llmtune.cli import main

TIMEOUT_S = "1"
# A fault must end well within this: one timeout, and a reconnect at most.
MAX_FAULT_S = 8.0


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Iterator[FakeHub]:
    folder = tmp_path_factory.mktemp("hub-files")
    with standard_hub(folder, demo_model) as served:
        data = demo_model.read_bytes()
        (folder / "truncated.gguf").write_bytes(data[:500_000])
        (folder / "corrupt.gguf").write_bytes(data[:16] + b"\xff" * 64 + data[80:3_000_000])
        served.add_repo(
            "test/broken",
            {
                "truncated-Q4_0.gguf": folder / "truncated.gguf",
                "corrupt-Q8_0.gguf": folder / "corrupt.gguf",
            },
        )
        yield served


@pytest.fixture
def cache(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in hub_env(hub, tmp_path / "cache", tmp_path / "hf").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LLMTUNE_HTTP_TIMEOUT", TIMEOUT_S)
    hub.reset()
    return tmp_path / "cache" / "headers"


def one_line_exit_2(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    start = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert time.monotonic() - start < MAX_FAULT_S
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmtune: error: "), err
    assert "Traceback" not in err
    return lines[0]


def assert_cache_clean(cache: Path) -> None:
    """No header for a failed read, and no temporary file, in the cache."""
    if cache.exists():
        assert [p.name for p in cache.iterdir() if not p.name.startswith("url-")] == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("inspect", "--hf", "test/nope:Q4_0"), "no model repo test/nope"),
        (("fit", "--hf", "test/smol:Q9_9"), "no Q9_9 file in test/smol; it has Q4_1"),
        (("inspect", "--hf", "test/gated"), "gated"),
        (("inspect", "--hf", "test/private"), "set HF_TOKEN if it is private"),
        (("inspect", "--hf", "test/broken:Q4_0"), "run past the end of the file"),
        (("inspect", "--hf", "test/broken:Q8_0"), "test/broken"),
        (("inspect", "--hf", "not a repo"), "not a Hub model id"),
    ],
)
def test_bad_repos_and_files(
    cache: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], expected: str
) -> None:
    line = one_line_exit_2(capsys, *argv)
    assert expected in line
    assert_cache_clean(cache)


def test_a_wrong_token_is_named(
    cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    line = one_line_exit_2(capsys, "inspect", "--hf", "test/smol")
    assert "refused the token" in line


def test_the_token_file_is_read(
    cache: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hub.faults.token = "hf_good"
    try:
        (tmp_path / "hf").mkdir(exist_ok=True)
        (tmp_path / "hf" / "token").write_text("hf_good\n")
        assert main(["inspect", "--hf", "test/private", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["n_layer"] == 30
    finally:
        hub.faults.token = None


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"ignore_range": True}, "ignores HTTP range requests"),
        ({"cut_after": 100_000}, "after 100,000 of"),
        ({"delay_s": 3.0}, "no answer within 1 s"),
        ({"trickle_s": 0.05}, "in 1 s"),
        ({"redirect_loop": True}, "redirects in a loop"),
    ],
)
def test_server_faults(
    cache: Path,
    hub: FakeHub,
    capsys: pytest.CaptureFixture[str],
    fault: dict[str, object],
    expected: str,
) -> None:
    from llmtune.model.hub import list_repo

    list_repo("test/smol")  # a warm Hub: the fault hits the header read
    url = hub.add_file("smol.gguf", hub.repos["test/smol"]["SmolLM2-135M-Instruct.Q4_1.gguf"].path)
    for key, value in fault.items():
        setattr(hub.faults, key, value)
    # A redirect loop needs the Hub's resolve; the rest are read at a URL (no listing).
    model = ["--hf", "test/smol"] if "redirect_loop" in fault else [url]
    line = one_line_exit_2(capsys, "inspect", *model)
    assert expected in line, line
    assert_cache_clean(cache)


def test_a_url_that_is_missing(
    cache: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    line = one_line_exit_2(capsys, "fit", f"{hub.endpoint}/files/missing.gguf")
    assert "no such file (HTTP 404)" in line


def test_the_hub_not_answering(
    cache: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.faults.delay_s = 3.0
    line = one_line_exit_2(capsys, "fit", "--hf", "test/smol")
    assert "did not answer in time" in line


def test_fit_lists_a_repo_best_first(
    cache: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fit", "--hf", "test/split", "--gpu", "8GiB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    labels = [row["label"] for row in out["rows"]]
    assert labels == ["Q8_0", "Q4_0"]  # both fit on the GPU: the larger first
    assert out["rows"][0]["files"][0].endswith("-00001-of-00003.gguf")
    assert out["mmproj"] == ["mmproj-tiny-f16.gguf"]
    assert main(["fit", "--hf", "test/split", "--gpu", "8GiB"]) == 0
    text = capsys.readouterr().out
    assert "Q8_0" in text and "(3 files)" in text and "mmproj" in text


def test_search_answers_what_runs_here(
    cache: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", "test", "--limit", "2", "--gpu", "8GiB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["repo"] for r in out["results"]] == ["test/smol", "test/big"]
    assert out["results"][0]["best"] == "Q4_1"


def test_inspect_tensors_key_and_byte_layout(
    cache: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str], demo_model: Path
) -> None:
    assert main(["inspect", str(demo_model), "--key", "general.architecture"]) == 0
    assert capsys.readouterr().out == "llama\n"
    assert main(["inspect", "--hf", "test/smol", "--key", "tokenizer.ggml.tokens"]) == 0
    tokens = json.loads(capsys.readouterr().out)
    assert len(tokens) == 49152
    assert main(["inspect", str(demo_model), "--tensors"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 273 and lines[1].startswith("token_embd.weight")
    assert main(["inspect", str(demo_model)]) == 0
    text = capsys.readouterr().out
    assert "offsets and sizes reconcile" in text
    line = one_line_exit_2(capsys, "inspect", str(demo_model), "--key", "nope")
    assert "no metadata key 'nope'" in line

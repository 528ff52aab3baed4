"""``--hf OWNER/REPO[:QUANT]`` picks the file llama.cpp's ``-hf`` picks
(common/download.cpp ``find_best_model``), from the repo's listing alone."""

from __future__ import annotations

import pytest

from llmtune.errors import ConfigError
from llmtune.model.hub import Repo, RepoFile, choose, group_entries


def repo(*names: str) -> Repo:
    files = [RepoFile(n, 1000 + i, None, None) for i, n in enumerate(names)]
    return Repo("o/r", "main", group_entries(files))


def test_without_a_tag_q4_k_m_then_q8_0_then_the_first_model() -> None:
    assert choose(repo("m-Q2_K.gguf", "m-Q4_K_M.gguf", "m-Q8_0.gguf"), None).name == "m-Q4_K_M.gguf"
    assert choose(repo("m-Q2_K.gguf", "m-Q8_0.gguf"), None).name == "m-Q8_0.gguf"
    # neither: the first model by path, not the smallest file
    assert choose(repo("b-Q2_K.gguf", "a-Q6_K.gguf"), None).name == "a-Q6_K.gguf"


def test_a_tag_matches_case_insensitively_before_a_dot_or_dash() -> None:
    r = repo("m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m.q5_k_m.gguf")
    assert choose(r, "q5_k_m").name == "m.q5_k_m.gguf"
    assert choose(r, "Q4_K_S").name == "m-Q4_K_S.gguf"
    # "Q4_K" is not followed by . or - in any name: llama.cpp finds nothing either
    with pytest.raises(ConfigError, match="no Q4_K file"):
        choose(r, "Q4_K")


def test_sidecars_are_never_the_model_and_a_split_set_is_its_first_shard() -> None:
    r = repo(
        "imatrix-Q4_K_M.gguf",
        "mmproj-Q4_K_M.gguf",
        "Q4_K_M/m-Q4_K_M-00001-of-00002.gguf",
        "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf",
    )
    chosen = choose(r, None)
    assert [f.name for f in chosen.files] == [
        "Q4_K_M/m-Q4_K_M-00001-of-00002.gguf",
        "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf",
    ]

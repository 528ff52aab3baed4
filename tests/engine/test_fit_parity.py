"""``--ngl auto`` chooses what llama.cpp's own fit chooses, checked against
``llama-fit-params`` built from the same llama.cpp (``make tools``; built here
when missing, about 9 minutes once on 2 cores), on emulated GPUs: loopback RPC
servers with margins that leave each the size of a card (fit_parity.py).

A few cases of tests/bench/fit_parity.py: one device and two, a 70B-shaped and
a 13B-shaped model, the context given and left to the fit, and a MoE on two
devices whose experts come back with part of a layer on the next device.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fit_parity import Case, build_model, run_case

from llmtune.engine import tools
from llmtune.engine.rpc_host import RpcServerProcess
from rpc_support import real_servers

CASES = (
    Case("13b-q4_k", (6,), 4096),
    Case("13b-q4_k", (4, 4), 4096),
    Case("70b-q4_k", (12,), 4096),
    Case("70b-q4_k", (12, 12), 4096),
    Case("swa", (3,), 0),
    Case("moe", (2, 2), 4096),
)


@pytest.fixture(scope="module")
def fit_tool() -> Path:
    return tools.build()


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RpcServerProcess]]:
    with real_servers(2) as started:
        yield started


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_llmtune_fits_as_llama_cpp_fits(
    case: Case,
    fit_tool: Path,
    servers: list[RpcServerProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.getbasetemp() / "parity-models"
    folder.mkdir(exist_ok=True)
    outcome = run_case(case, build_model(case.model, folder), servers, fit_tool)
    assert not outcome.llama_cpp.startswith("(failed"), outcome.llama_cpp
    assert outcome.llmtune == outcome.llama_cpp

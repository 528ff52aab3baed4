"""``--rpc`` lists and the RPC probe against stand-ins on 127.0.0.1 (no llama.cpp).

A user who mistypes a host list, points at a dead port, at some other service
or at a server of another llama.cpp version reads one line naming the host and
what is wrong, within the probe's timeout.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import pytest

from llmtune.errors import LlmtuneError
from llmtune.hardware import rpc
from llmtune.hardware.rpc import RpcError, RpcHost, parse_endpoints, probe
from rpc_support import (
    FakeRpcServer,
    garbage_listener,
    refusing_endpoint,
    silent_listener,
)

BOUND_S = 20.0  # a hung probe fails the test instead of hanging the suite


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:50052", ("127.0.0.1:50052",)),
        ("10.0.0.2:1,gpu-box.lan:65535", ("10.0.0.2:1", "gpu-box.lan:65535")),
        (" 192.168.1.20:50052 , 192.168.1.21:50052 ", ("192.168.1.20:50052", "192.168.1.21:50052")),
        ("localhost:50052,127.0.0.1:50052", ("localhost:50052", "127.0.0.1:50052")),
        ("host:50052,host:50053", ("host:50052", "host:50053")),
    ],
)
def test_parse_endpoints_accepts_llama_cpp_rpc_lists(text: str, expected: tuple[str, ...]) -> None:
    assert parse_endpoints(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no servers given"),
        ("   ", "no servers given"),
        ("foo", "'foo' is not HOST:PORT"),
        ("foo:", "'foo:' is not HOST:PORT"),
        (":50052", "':50052' is not HOST:PORT"),
        ("h:abc", "the port is not a number"),
        ("h:+5", "the port is not a number"),
        ("h:\uff15", "the port is not a number"),
        ("h:0", "port 0 in 'h:0' is not between 1 and 65535"),
        ("h:70000", "port 70000 in 'h:70000' is not between 1 and 65535"),
        ("a:1,,b:2", "an empty item"),
        ("a:1,", "an empty item"),
        ("a:1,a:1", "'a:1' is given twice"),
        ("GPU:1,gpu:1", "'gpu:1' is given twice"),
        ("[::1]:50052", "IPv4 only"),
        ("::1:50052", "IPv4 only"),
        ("999.1.1.1:5", "not a host name or IPv4 address"),
        ("bad host:5", "not a host name or IPv4 address"),
        ("-x:5", "not a host name or IPv4 address"),
    ],
)
def test_parse_endpoints_refuses_what_llama_cpp_would_misread(text: str, says: str) -> None:
    with pytest.raises(RpcError) as caught:
        parse_endpoints(text)
    line = caught.value.one_line()
    assert line.startswith("--rpc: ")
    assert says in line
    assert "\n" not in line
    assert isinstance(caught.value, LlmtuneError)


def _probe_bounded(endpoint: str, **kwargs: Any) -> RpcHost | RpcError:
    """The probe's result or error, from a thread that must finish within BOUND_S."""
    result: list[RpcHost | RpcError] = []

    def run() -> None:
        try:
            result.append(probe(endpoint, **kwargs))
        except RpcError as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), "the probe did not return"
    return result[0]


def test_probe_of_a_port_where_nothing_listens_says_refused() -> None:
    endpoint = refusing_endpoint()
    error = _probe_bounded(endpoint, timeout_s=1.0)
    assert isinstance(error, RpcError)
    assert error.one_line() == (
        f"{endpoint}: connection refused (is ggml-rpc-server or llmtune rpc-server running there?)"
    )


def test_probe_of_a_listener_that_never_answers_gives_up_naming_the_host() -> None:
    with silent_listener() as endpoint:
        error = _probe_bounded(endpoint, timeout_s=1.0)
    assert isinstance(error, RpcError)
    assert error.one_line() == (
        f"{endpoint}: accepted the connection but did not answer within 1 s: "
        "not an RPC server, or busy serving another client"
    )


def test_probe_of_another_service_says_it_is_not_an_rpc_server() -> None:
    with garbage_listener() as endpoint:
        error = _probe_bounded(endpoint, timeout_s=1.0)
    assert isinstance(error, RpcError)
    assert error.one_line().startswith(f"{endpoint} is not a llama.cpp RPC server")


def test_probe_of_a_listener_that_hangs_up_says_so() -> None:
    with FakeRpcServer(hang_up=True) as server:
        error = _probe_bounded(server.endpoint, timeout_s=1.0)
    assert isinstance(error, RpcError)
    assert "closed the connection at HELLO" in error.one_line()


@pytest.mark.parametrize("version", [(6, 1, 0), (8, 0, 0), (7, 1, 0)])
def test_probe_of_another_protocol_version_names_both_versions(
    version: tuple[int, int, int],
) -> None:
    with FakeRpcServer(version=version) as server:
        error = _probe_bounded(server.endpoint, timeout_s=1.0)
    assert isinstance(error, RpcError)
    line = error.one_line()
    assert line.startswith(f"{server.endpoint}: ")
    assert f"protocol {'.'.join(map(str, version))}" in line
    assert rpc.PROTO_VERSION in line


def test_probe_reports_devices_rtt_and_bandwidth_and_hangs_up() -> None:
    devices = ((3 << 30, 4 << 30), (10 << 30, 24 << 30))
    with FakeRpcServer(devices=devices) as server:
        host = _probe_bounded(server.endpoint, timeout_s=2.0)
        assert server.closed_by_client.wait(BOUND_S), "the probe left its connection open"
    assert isinstance(host, RpcHost)
    assert host.endpoint == server.endpoint
    assert host.protocol_version == rpc.PROTO_VERSION
    assert [(d.index, d.free_bytes, d.total_bytes) for d in host.devices] == [
        (0, 3 << 30, 4 << 30),
        (1, 10 << 30, 24 << 30),
    ]
    assert host.total_free_bytes == 13 << 30
    assert host.total_bytes == 28 << 30
    assert host.rtt_s > 0
    assert host.bandwidth_bytes_per_s is not None and host.bandwidth_bytes_per_s > 0
    # The tensor passed the checks the real server makes before it would abort.
    assert server.errors == []
    assert server.bytes_written > 0
    assert server.buffers == {}, "the probe's buffer was not freed"


def test_probe_without_bandwidth_sends_no_buffer_commands() -> None:
    with FakeRpcServer() as server:
        host = _probe_bounded(server.endpoint, timeout_s=2.0, measure_bandwidth=False)
    assert isinstance(host, RpcHost)
    assert host.bandwidth_bytes_per_s is None
    assert rpc.CMD_ALLOC_BUFFER not in server.commands


def test_probe_still_succeeds_when_the_host_lends_no_buffer() -> None:
    with FakeRpcServer(lend_buffers=False) as server:
        host = _probe_bounded(server.endpoint, timeout_s=2.0)
    assert isinstance(host, RpcHost)
    assert host.devices[0].free_bytes == 3 << 30
    assert host.bandwidth_bytes_per_s is None


def test_rpc_tensor_is_the_packed_296_bytes_of_ggml_rpc_cpp() -> None:
    raw = rpc.rpc_tensor_bytes(buffer=0xAB, data=0x1000, nbytes=4096)
    assert len(raw) == rpc.RPC_TENSOR_SIZE == 296
    fields = struct.unpack("<QIQ4I4II16ii10QQQQ64si", raw)
    assert fields[1] == 0  # GGML_TYPE_F32
    assert fields[2] == 0xAB
    assert fields[3:7] == (1024, 1, 1, 1)
    assert fields[7:11] == (4, 4096, 4096, 4096)
    assert fields[-3] == 0x1000
    with pytest.raises(ValueError):
        rpc.rpc_tensor_bytes(buffer=1, data=1, nbytes=6)

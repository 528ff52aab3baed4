"""attach's core without llama.cpp: the command line read back, the answers parsed,
and servers on 127.0.0.1 that are not llama-server, want a key, load or restart."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from llmtune.engine.attach import Attacher, SlotSample, normalise_url, parse_metrics, parse_slots
from llmtune.errors import ConfigError
from llmtune.fit.options import server_args
from llmtune.fit.serverline import is_llama_server, parse_server_args
from llmtune.fit.settings import NGL_AUTO, Extras, Settings


def test_the_line_llmtune_writes_reads_back_as_the_same_settings() -> None:
    s = Settings(n_gpu_layers=20, n_ctx=8192, n_parallel=3, cache_type_k="q8_0",
                 cache_type_v="q4_0", flash_attn="on", tensor_split=(3.0, 1.0), n_batch=1024,
                 n_ubatch=256, no_kv_offload=True, swa_full=True)  # fmt: skip
    line = parse_server_args(["llama-server", "-m", "m.gguf", *server_args(s, Extras())])
    assert line.settings == s
    assert line.model == "m.gguf" and line.model_kind == "path"


def test_long_names_inline_values_and_defaults() -> None:
    line = parse_server_args(
        ["/opt/llama-server", "--model=/m.gguf", "--n-gpu-layers", "all", "--ctx-size=2048",
         "--port", "9000", "--temp", "-0.5", "--api-key", "secret", "--metrics", "--rpc",
         "a:1,b:2", "-ot", "exps=CPU"]
    )  # fmt: skip
    assert line.settings.n_gpu_layers == -1 and line.settings.n_ctx == 2048
    assert line.port == 9000 and line.metrics and line.api_key
    assert line.rpc == ("a:1", "b:2")
    assert line.skipped == ("-ot exps=CPU",)
    assert "secret" not in repr(line)
    bare = parse_server_args(["llama-server", "-m", "x.gguf"])
    # llama-server's own defaults: --fit chooses -ngl, -np auto is 4 slots sharing one cache.
    assert bare.settings.n_gpu_layers == NGL_AUTO
    assert bare.settings.n_parallel == 4 and bare.settings.kv_unified
    assert (bare.host, bare.port) == ("127.0.0.1", 8080)


def test_a_bad_value_is_one_line() -> None:
    with pytest.raises(ConfigError, match="-ngl"):
        parse_server_args(["llama-server", "-ngl", "many"])
    with pytest.raises(ConfigError, match="no value"):
        parse_server_args(["llama-server", "-c"])


def test_which_programs_are_llama_server() -> None:
    assert is_llama_server(["/usr/local/bin/llama-server", "-m", "x"])
    assert not is_llama_server(["python", "llama-server"])
    assert not is_llama_server([])


def test_metrics_and_slots_parse() -> None:
    text = "# HELP llamacpp:x y\nllamacpp:tokens_predicted_total 16\nllamacpp:bad nan\nother 3\n"
    assert parse_metrics(text) == {"tokens_predicted_total": 16.0}
    slots = parse_slots(
        [{"id": 0, "n_ctx": 100, "is_processing": False},
         {"id": 1, "n_ctx": 100, "is_processing": True, "id_task": 3, "n_prompt_tokens": 25,
          "next_token": [{"n_decoded": 7}]}, "junk"]
    )  # fmt: skip
    assert slots == (SlotSample(0, 100, False, 0), SlotSample(1, 100, True, 25, 7, None, 3))
    assert slots[1].kv_fill == 0.25


def test_bad_urls() -> None:
    assert normalise_url("127.0.0.1:8080/") == "http://127.0.0.1:8080"
    for bad in ("ftp://x", "http://", "http://h:99999"):
        with pytest.raises(ConfigError):
            normalise_url(bad)


# ---- servers on 127.0.0.1 ----------------------------------------------------------


class Script:
    """What the loopback server answers: path -> (status, JSON or text)."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, Any]] = {}
        self.methods: list[str] = []


@pytest.fixture
def http_server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            script.methods.append(self.command)
            status, body = script.answers.get(self.path, (404, "<html>not found</html>"))
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", script
    server.shutdown()
    server.server_close()


def _llama(script: Script, model: str, predicted: int = 0) -> None:
    script.answers = {
        "/health": (200, {"status": "ok"}),
        "/props": (
            200,
            {"default_generation_settings": {"n_ctx": 512}, "total_slots": 1, "model_path": model},
        ),  # fmt: skip
        "/slots": (200, [{"id": 0, "n_ctx": 512, "is_processing": False}]),
        "/metrics": (200, f"llamacpp:tokens_predicted_total {predicted}\n"),
    }


def test_an_http_server_that_is_not_llama_server_is_named(http_server: tuple[str, Script]) -> None:
    url, script = http_server
    sample = Attacher(url).tick()
    assert sample.state == "not-llama"
    assert "is not a llama-server" in sample.message and "/health: HTTP 404" in sample.message
    assert set(script.methods) == {"GET"}


def test_loading_denied_and_restarted(http_server: tuple[str, Script]) -> None:
    url, script = http_server
    attacher = Attacher(url)
    script.answers = {"/health": (503, {"error": {"message": "Loading model", "code": 503}})}
    assert attacher.tick().state == "loading"
    _llama(script, "/a.gguf")
    script.answers["/props"] = (401, {"error": {"message": "Invalid API Key"}})
    denied = attacher.tick()
    assert denied.state == "denied" and "LLAMA_API_KEY" in denied.message
    _llama(script, "/a.gguf", predicted=50)
    assert attacher.tick().state == "ok"
    _llama(script, "/b.gguf")
    again = attacher.tick()
    assert again.restarted and "/b.gguf" in again.message
    assert set(script.methods) == {"GET"}


def test_nothing_listening_is_down(http_server: tuple[str, Script]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sample = Attacher(f"http://127.0.0.1:{port}").tick()
    assert sample.state == "down" and "connection refused" in sample.message


def test_a_keep_alive_connection_the_server_dropped_is_not_a_server_down() -> None:
    """llama-server closes idle kept-alive connections (its keep-alive timeout): the
    next tick retries on a new connection instead of reporting the server down
    and losing the speed counters' baseline."""
    script = Script()
    _llama(script, "/a.gguf")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive by default

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            status, body = script.answers.get(self.path, (404, "not found"))
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True  # dropped after the answer, unannounced

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        attacher = Attacher(f"http://127.0.0.1:{server.server_address[1]}")
        states = [attacher.tick().state for _ in range(3)]
        attacher.close()
    finally:
        server.shutdown()
        server.server_close()
    assert states == ["ok", "ok", "ok"]

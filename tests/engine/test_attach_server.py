"""``llmtune attach`` against the real llama-server of ``make tools``, on 127.0.0.1 only.

The server runs the demo model with two slots and one or two threads; the test
drives it with a few short completions and compares what attach reports with
what the server's own responses and psutil say. No wall-clock speed of the
test itself is asserted: only the samples and the timestamps attach records.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from llmtune.engine import tools
from llmtune.engine.attach import Attacher, ServerSample
from llmtune.engine.attach_local import LocalProcess, find_servers

# llama.cpp's own server, built from the vendored source (make tools; built here,
# several minutes once, when missing: these tests never skip for lack of it).
SERVER = tools.build() / "llama-server"
START_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, model: Path, metrics: bool) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
               "-np", "2", "-c", "1024", "-t", "2"]  # fmt: skip
        if metrics:
            cmd.append("--metrics")
        env = dict(os.environ, LD_LIBRARY_PATH=str(SERVER.parent))
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "llama-server exited while starting"
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail("llama-server did not answer /health in time")

    def complete(self, n_predict: int, prompt: str = "Once upon a time") -> dict[str, Any]:
        body = json.dumps({"prompt": prompt, "n_predict": n_predict, "seed": 1}).encode()
        request = urllib.request.Request(self.url + "/completion", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=300) as r:
            answer: dict[str, Any] = json.load(r)
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(demo_model: Path) -> Iterator[Server]:
    s = Server(demo_model, metrics=True)
    yield s
    s.stop()


def _ticks(
    attacher: Attacher, until: Any, limit: int, interval_s: float = 0.5
) -> list[ServerSample]:
    """Tick until ``until(sample)`` holds, at most ``limit`` times; every sample."""
    seen: list[ServerSample] = []
    for _ in range(limit):
        seen.append(attacher.tick())
        if until(seen[-1]):
            break
        time.sleep(interval_s)
    return seen


def test_finds_the_process_and_reads_its_arguments(server: Server, demo_model: Path) -> None:
    found = [s for s in find_servers() if s.pid == server.proc.pid]
    assert found, "the running llama-server is not among the processes found"
    local = found[0]
    assert local.url == server.url
    assert local.line is not None
    assert local.line.metrics
    assert local.line.settings.n_parallel == 2
    assert local.line.settings.n_ctx == 1024
    assert local.line.settings.threads == 2
    assert local.model_path == str(demo_model)


def test_speed_kv_fill_and_memory_match_the_server(server: Server) -> None:
    attacher = Attacher(server.url, interval_s=0.5, process=LocalProcess(server.proc.pid))
    first = attacher.tick()
    assert first.state == "ok", first.message
    assert first.metrics and first.total_slots == 2
    answer = server.complete(24)
    reported = answer["timings"]["predicted_per_second"]
    samples = _ticks(attacher, lambda s: s.speed_from == "metrics", limit=6)
    measured = samples[-1]
    assert measured.speed_from == "metrics", [s.message for s in samples]
    assert measured.tg_tokens_per_s is not None
    assert abs(measured.tg_tokens_per_s - reported) <= 0.1 * reported
    # The slot that answered holds the prompt and the generated tokens in its cache.
    used = [s for s in measured.slots if s.n_tokens]
    assert len(used) == 1 and len(measured.slots) == 2
    held = answer["timings"]["prompt_n"] + answer["timings"]["cache_n"]
    assert used[0].n_tokens is not None and used[0].n_tokens >= held
    assert used[0].kv_fill == pytest.approx(used[0].n_tokens / used[0].n_ctx)
    rss = psutil.Process(server.proc.pid).memory_info().rss
    assert measured.process.rss_bytes is not None
    assert abs(measured.process.rss_bytes - rss) <= 0.1 * rss
    attacher.close()


def test_cli_prints_one_json_sample_per_interval(server: Server) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmtune.cli", "attach", "--pid", str(server.proc.pid),
         "--json", "--samples", "2", "--interval", "0.3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 2
    assert lines[0]["state"] == "ok" and lines[0]["pid"] == server.proc.pid
    assert lines[0]["total_slots"] == 2
    assert lines[0]["predicted"]["n_parallel"] == 2
    assert lines[0]["predicted"]["host_bytes"] > 0
    assert lines[1]["timestamp"] > lines[0]["timestamp"]


def test_a_server_killed_mid_request_is_reported_within_2_s(demo_model: Path) -> None:
    s = Server(demo_model, metrics=True)
    attacher = Attacher(s.url, interval_s=0.5, process=LocalProcess(s.proc.pid))
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            s.complete(400)
        except BaseException as exc:  # the kill cuts the request: expected
            errors.append(exc)

    asker = threading.Thread(target=ask, daemon=True)
    try:
        asker.start()
        busy = _ticks(attacher, lambda x: x.busy_slots > 0, limit=40)
        assert busy[-1].busy_slots == 1, [x.message for x in busy]
        s.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()  # the attacher's clock
        after = _ticks(attacher, lambda x: x.state == "down", limit=10)
        down = after[-1]
        assert down.state == "down", [x.message for x in after]
        assert "not answering" in down.message
        assert down.timestamp - killed_at <= 2.0
    finally:
        s.stop()
        asker.join(timeout=30)
        attacher.close()


def test_without_metrics_the_slots_give_the_speed(demo_model: Path) -> None:
    s = Server(demo_model, metrics=False)
    # Slot counters give a speed between two ticks of one generation: a long
    # enough answer and short ticks make sure two ticks fall inside it.
    attacher = Attacher(s.url, interval_s=0.25)
    asker = threading.Thread(target=s.complete, args=(320,), daemon=True)
    try:
        assert attacher.tick().state == "ok"
        asker.start()
        samples = _ticks(
            attacher, lambda x: x.tg_tokens_per_s is not None, limit=120, interval_s=0.25
        )
        last = samples[-1]
        assert not last.metrics
        assert last.speed_from == "slots", [x.message for x in samples]
        assert last.tg_tokens_per_s is not None and last.tg_tokens_per_s > 0
    finally:
        asker.join(timeout=300)
        s.stop()
        attacher.close()

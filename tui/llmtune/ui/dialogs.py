"""The dialogs the app's keys open: picker, help, GPU what-if, RPC hosts, hand-off, tune, quantize.

Each function pushes one screen and, when the screen is dismissed with an
answer, hands the answer to the app (open a file, plan for a GPU, apply tuned
settings); the app's actions call them. The picker's demo row downloads the
demo model in a thread worker that posts ``DemoFetched``. Screens are imported when first
opened, so starting the app does not pay for them.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

from llmtune.errors import LlmtuneError
from llmtune.fit.settings import Settings
from llmtune.model.spec import is_url
from llmtune.textsafe import inert
from llmtune.ui.messages import DemoFetched, ModelReady

if TYPE_CHECKING:
    from llmtune.ui.app import LlmtuneApp
    from llmtune.ui.screens.hub_repo import HubChoice

__all__ = [
    "attach",
    "choose_gpu",
    "download",
    "fetch_demo",
    "hub_repo",
    "open_remote",
    "osc52_copy",
    "handoff",
    "help_screen",
    "picker",
    "quality",
    "quantize",
    "rpc_hosts",
    "tune",
]


def picker(app: LlmtuneApp, can_go_back: bool = True) -> None:
    """Choose a model; with none open yet, the picker cannot be left without one."""
    from llmtune.ui.screens.picker import ATTACH, DEMO_DOWNLOAD, HUB_PREFIX, ModelPicker

    def chosen(path: str | None) -> None:
        if path == DEMO_DOWNLOAD:
            fetch_demo(app)
        elif path == ATTACH:
            attach(app)
        elif path and path.startswith(HUB_PREFIX):
            hub_repo(app, path.removeprefix(HUB_PREFIX))
        elif path and is_url(path):
            open_remote(app, path)
        elif path:
            app.open_model(path)

    app.push_screen(ModelPicker(can_go_back=can_go_back, last_model=app.store.last_model), chosen)


def attach(app: LlmtuneApp) -> None:
    """Watch a running llama-server (chosen on the screen) beside its plan; with no
    model open yet, the picker comes back when the screen closes."""
    from llmtune.ui.screens.attach import AttachScreen, AttachTarget

    def closed(_result: None) -> None:
        if app.spec is None:
            picker(app, False)

    app.push_screen(AttachScreen(AttachTarget(interval_s=app.options.interval_s)), closed)


def fetch_demo(app: LlmtuneApp) -> None:
    """Download the demo model in a thread; ``DemoFetched`` says how it went."""
    from llmtune.model.demo import fetch_demo_model

    def fetch() -> None:
        try:
            path = fetch_demo_model()
        except Exception as exc:  # no network is expected: say so, and offer the picker again
            message = exc.one_line() if isinstance(exc, LlmtuneError) else str(exc)
            app.post_message(DemoFetched(None, inert(message)))
            return
        app.post_message(DemoFetched(str(path)))

    app.notify("Downloading the demo model (98 MB)…", markup=False)
    app.run_worker(fetch, name="demo", group="demo", exclusive=True, thread=True,
                   exit_on_error=False)  # fmt: skip


def help_screen(app: LlmtuneApp) -> None:
    from llmtune.ui.screens.help import HelpScreen

    app.push_screen(HelpScreen())


def choose_gpu(app: LlmtuneApp) -> None:
    """Plan for a GPU profile (a what-if) or for this machine's own devices."""
    from llmtune.hardware.profiles import parse_gpu_spec
    from llmtune.ui.screens.choose_gpu import ChooseGPU

    hardware = app.hardware
    gpus = hardware.machine_gpus
    label = ", ".join(d.name for d in gpus) if gpus else "CPU only"
    current = hardware.what_if[0].profile if hardware.what_if else None

    def chosen(key: str | None) -> None:
        if key is None:
            return
        app.set_what_if([parse_gpu_spec(key)] if key else [])
        app.focus_pane(app.active_pane)
        shown = app.hardware.describe()
        app.notify(shown[0].upper() + shown[1:] + ".", markup=False, timeout=4)

    app.push_screen(ChooseGPU(label, current), chosen)


def rpc_hosts(app: LlmtuneApp) -> None:
    """Add or remove llama.cpp RPC hosts; the app plans with the list the screen
    closes with (the hosts are asked in the screen, never again here)."""
    from llmtune.ui.hosts import HostEntry, entries_of
    from llmtune.ui.screens.rpc_hosts import RpcHostsScreen

    def closed(entries: tuple[HostEntry, ...] | None) -> None:
        if entries is not None:
            app.set_rpc_hosts(entries)
        app.focus_pane(app.active_pane)

    screen = RpcHostsScreen(
        entries_of(app.hardware),
        app.hardware.host,
        network_bytes_per_s=app.options.network_bytes_per_s,
        timeout_s=app.options.rpc_timeout_s,
    )
    app.push_screen(screen, closed)


def handoff(app: LlmtuneApp) -> None:
    from llmtune.ui.screens.handoff import HandoffScreen

    if app.plan is None:
        return
    app.push_screen(HandoffScreen(app.handoff_for(app.plan), app.copy_to_clipboard))


def tune(app: LlmtuneApp) -> None:
    """Real loads on this machine; the loaded model is unloaded first (the tuner
    needs the memory). The best settings found are applied, the margin kept."""
    from llmtune.ui.screens.tune import TuneScreen

    if app.spec is None or app.planner is None:
        return
    if app.session.holds_model:
        app.worker.unload()
        app.notify("Unloaded the model: the tuner needs the memory.", markup=False)
    if app.hardware.is_what_if:
        app.notify(
            "Tuning runs here, on this machine's own hardware, not the what-if hardware.",
            markup=False,
            timeout=6,
        )

    def tuned(best: Settings | None) -> None:
        if best is None:
            return
        keep = {"margin_bytes": app.settings.margin_bytes}
        if app.change_settings(**{**_fields(best), **keep}):
            app.notify("Applied the tuned settings; a: load them.", markup=False)

    hardware = app.hardware
    # The trials run here: this machine's devices and the RPC hosts it plans with.
    devices = (*hardware.rpc, *hardware.local)
    app.push_screen(TuneScreen(app.spec, devices, app.settings, hardware.speed), tuned)


def quantize(app: LlmtuneApp) -> None:
    """Write the file type highlighted in the quantization pane (or the what-if in
    force); the written file is opened."""
    from llmtune.ui.screens.quantize import QuantizeScreen

    if app.model_path is None:
        return
    target = app.quant
    if app.active_pane == "quant" or app.layout_mode == "wide":
        row = app.quant_pane.highlighted()
        if row is not None and not row.is_current:
            target = row.file_type
    if target is None:
        app.notify(
            "Choose a file type in the quantization pane (2), then w writes it.",
            markup=False,
        )
        return

    def written(path: str | None) -> None:
        if path:
            app.open_model(path)

    app.push_screen(QuantizeScreen(app.model_path, target), written)


def quality(app: LlmtuneApp, file_type: str | None = None) -> None:
    """Measure one file type (the highlighted row's, else the what-if in force) against
    the open model; the quantization pane shows the kept result."""
    from llmtune.ui.screens.quality import QualityScreen

    if app.model_path is None or app.spec is None:
        return
    target = file_type or app.quant
    if target is None or target == app.spec.file_type_name:
        app.notify(
            "Highlight another file type in the quantization pane (2), then m measures it.",
            markup=False,
        )
        return

    def closed(measured: bool | None) -> None:
        if measured:
            app.quant_table.load_quality()

    app.push_screen(QualityScreen(app.model_path, target), closed)


def _fields(settings: Settings) -> dict[str, object]:
    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def open_remote(app: LlmtuneApp, url: str, hf: str | None = None) -> None:
    """Read a model's header over the network in a thread (a URL, or ``hf``'s
    ``OWNER/REPO:QUANT``); ``ModelReady`` opens it, a failure is one line."""
    from llmtune.model.source import open_spec

    def fetch() -> None:
        try:
            spec = open_spec(url or None, hf).spec
        except LlmtuneError as exc:
            app.post_message(ModelReady(None, exc.one_line()))
            return
        app.post_message(ModelReady(spec))

    app.notify(f"Reading the header of {inert(hf or url, max_chars=100)}…", markup=False)
    app.run_worker(fetch, name="remote", group="remote", exclusive=True, thread=True,
                   exit_on_error=False)  # fmt: skip


def hub_repo(app: LlmtuneApp, ref: str) -> None:
    """A Hub repo's files planned for this machine; plan one, or download it.
    ``OWNER/REPO:QUANT`` names one file: it is planned at once."""
    from llmtune.ui.screens.hub_repo import HubRepoScreen

    if ":" in ref:
        open_remote(app, "", hf=ref)
        return

    def chosen(choice: HubChoice | None) -> None:
        if choice is None:
            return
        if choice.action == "download":
            download(app, choice)
        elif choice.row.spec is not None:
            app.post_message(ModelReady(choice.row.spec))

    app.push_screen(HubRepoScreen(ref, app.hardware, app.settings), chosen)


def download(app: LlmtuneApp, choice: HubChoice) -> None:
    """Download the chosen file into the Hugging Face cache, then open it."""
    from llmtune.ui.screens.download import DownloadScreen

    def done(path: str | None) -> None:
        if path is not None:
            app.open_model(path)

    app.push_screen(DownloadScreen(choice.repo, choice.row.entry), done)


def osc52_copy(driver: object, text: str) -> None:
    """OSC 52, plain and, inside tmux, also wrapped for tmux's passthrough: the
    first works with `set-clipboard on`, the second with `allow-passthrough on`."""
    import os

    from llmtune.clipboard import osc52

    write = getattr(driver, "write", None)
    if write is None:
        return
    write(osc52(text, tmux=False))
    if os.environ.get("TMUX"):
        write(osc52(text, tmux=True))

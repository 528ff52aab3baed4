"""The ``llmtune`` command: argument parsing and dispatch, no logic of its own.

Each sub-command's logic and output live in ``llmtune.commands.<name>``; this
module turns the command line into the typed values they take.

Every error reaches the user as one line, ``llmtune: error: <what> (<where>)``,
with exit status 2; a traceback only with ``LLMTUNE_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from llmtune import __version__
from llmtune.errors import LlmtuneError

if TYPE_CHECKING:
    from llmtune.fit.settings import Settings
    from llmtune.hardware.machine import MachineOptions


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line in llmtune's format."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (command line; see '{self.prog} --help')")


def _fail(line: str) -> NoReturn:
    from llmtune.textsafe import inert

    print(f"llmtune: error: {inert(line, max_chars=2000)}", file=sys.stderr)
    raise SystemExit(2)


def _app_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmtune",
        description="Will this GGUF model run here, with which llama.cpp settings, and how fast?",
        epilog=f"Sub-commands: {', '.join(COMMANDS)} (llmtune COMMAND --help).",
    )
    parser.add_argument(
        "model",
        nargs="?",
        help="a .gguf file or https URL (default: a picker over the models found here)",
    )
    _add_hf_option(parser)
    _add_machine_options(parser)
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often to sample GPU, RAM and the worker (default 1, at least 0.2)",
    )
    parser.add_argument(
        "--compact", action="store_true", help="the side-pane view of gauges at any width"
    )
    parser.add_argument("--theme", metavar="NAME", help="a Textual theme (textual-dark, nord, ...)")
    parser.add_argument("--version", action="version", version=f"llmtune {__version__}")
    return parser


def _inspect_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmtune inspect",
        description="Show what a GGUF file holds; a remote one by reading only its header.",
    )
    parser.add_argument(
        "model", nargs="?", help="a .gguf file (any shard of a split model) or an https URL"
    )
    _add_hf_option(parser)
    parser.add_argument(
        "--tensors", action="store_true", help="list every tensor: type, shape, bytes, offset"
    )
    parser.add_argument(
        "--key", metavar="NAME", help="print one metadata value (arrays as JSON) and nothing else"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _search_parser() -> argparse.ArgumentParser:
    from llmtune.fit.argtypes import whole

    parser = _Parser(
        prog="llmtune search",
        description="Ask the Hugging Face Hub for GGUF repos matching TEXT (most downloaded "
        "first) and say which file of each runs here, reading only headers.",
    )
    parser.add_argument("text", help="what to search for, e.g. 'qwen 7b instruct'")
    parser.add_argument(
        "--limit", type=whole, default=10, metavar="N", help="repos to show (default 10)"
    )
    _add_settings_options(parser, model=False)
    return parser


def _download_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmtune download",
        description="Download a GGUF model from the Hub into the Hugging Face cache: resumable, "
        "verified by size and SHA-256, the free disk space checked first.",
    )
    _add_hf_option(parser, required=True)
    parser.add_argument("--json", action="store_true", help="print one JSON object when done")
    return parser


def _attach_parser() -> argparse.ArgumentParser:
    from llmtune.fit.argtypes import whole
    from llmtune.fit.options import add_arguments

    parser = _Parser(
        prog="llmtune attach",
        description="Watch a llama-server that already runs, here or elsewhere, beside "
        "llmtune's plan for it. Only reads its /health, /props, /slots and /metrics.",
    )
    parser.add_argument(
        "url", nargs="?", help="its address, e.g. http://127.0.0.1:8080 (default: choose one "
        "of the llama-server processes on this machine)",
    )  # fmt: skip
    parser.add_argument("--pid", type=whole, help="the local llama-server process to watch")
    parser.add_argument(
        "--api-key", metavar="KEY", help="the server's --api-key (default: $LLAMA_API_KEY)"
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="default 1, at least 0.2"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per interval")
    parser.add_argument("--samples", type=whole, metavar="N", help="stop after N samples")
    parser.add_argument(
        "--model", metavar="PATH|URL", help="the server's GGUF, where llmtune cannot read "
        "the path it reports (a remote server)",
    )  # fmt: skip
    _add_machine_options(parser)
    add_arguments(parser)  # what /props does not say of a remote server: --ngl, ...
    return parser


def _add_hf_option(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--hf",
        metavar="OWNER/REPO[:QUANT]",
        required=required,
        help="a model on the Hugging Face Hub, as llama.cpp's -hf (QUANT picks the file; "
        "Q4_K_M by default); honours HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE",
    )


def _fit_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmtune fit",
        description="Plan a model on this machine (or on --gpu/--ram) before loading it.",
    )
    _add_settings_options(parser)
    return parser


def _bench_parser() -> argparse.ArgumentParser:
    from llmtune.fit.argtypes import whole

    parser = _Parser(
        prog="llmtune bench",
        description="Load the model in llama.cpp on this machine and measure it, like llama-bench.",
    )
    _add_settings_options(parser, what_if=False)
    parser.add_argument("--prompt-tokens", type=whole, default=512, metavar="N")
    parser.add_argument("--gen-tokens", type=whole, default=128, metavar="N")
    parser.add_argument("--repeat", type=whole, default=3, metavar="N")
    parser.add_argument(
        "--no-calibrate", action="store_true", help="do not keep the measured speed for fit"
    )
    parser.add_argument(
        "--history",
        action="store_true",
        help="print the runs that corrected this machine's speed model (predicted against "
        "measured: bench, tune, the app) and exit; takes no MODEL",
    )
    return parser


def _bench_history_parser() -> argparse.ArgumentParser:
    from llmtune.fit.argtypes import whole

    parser = _Parser(
        prog="llmtune bench --history",
        description="The runs that corrected this machine's speed model, predicted against measured.",
    )
    parser.add_argument("--history", action="store_true", required=True)
    parser.add_argument("--last", type=whole, default=20, metavar="N", help="default 20")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _quantize_parser() -> argparse.ArgumentParser:
    from llmtune.fit.argtypes import whole

    parser = _Parser(
        prog="llmtune quantize",
        description="Quantize a GGUF model with llama.cpp's quantizer: a dry run first, "
        "then a temporary file that gets its name only when complete.",
    )
    parser.add_argument("model", help="the .gguf file to read (F16/BF16/F32 is best)")
    parser.add_argument(
        "--to", required=True, metavar="FTYPE", help="file type: Q4_K_M, Q8_0, Q2_K, IQ4_XS, ..."
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="the file to write (default: beside MODEL, its quant tag replaced by FTYPE)",
    )
    parser.add_argument(
        "--allow-requantize",
        action="store_true",
        help="quantize an already quantized model (costs quality, as llama.cpp warns)",
    )
    parser.add_argument(
        "--imatrix", metavar="FILE", help="importance matrix from llama-imatrix (.gguf or .dat)"
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--threads", type=whole, default=0, metavar="N", help="quantizer threads (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _quality_parser() -> argparse.ArgumentParser:
    from llmtune.fit.argtypes import whole

    parser = _Parser(
        prog="llmtune quality",
        description="Measure what each file type costs in quality on this model: quantize "
        "from MODEL with llama.cpp's quantizer into a temporary file, then compare with "
        "MODEL by llama.cpp's KL-divergence test (llama-perplexity, from make tools).",
    )
    parser.add_argument("model", help="the .gguf file to measure against (F16/BF16/F32 is best)")
    parser.add_argument(
        "--types",
        metavar="FTYPE,...",
        help="file types to measure (default Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q3_K_M,Q2_K)",
    )
    parser.add_argument(
        "--text", metavar="FILE", help="plain UTF-8 text to measure on (default: the bundled text)"
    )
    parser.add_argument(
        "--ctx", type=whole, default=512, metavar="N", help="chunk length in tokens (default 512)"
    )
    parser.add_argument("--chunks", type=whole, metavar="N", help="use at most N chunks")
    parser.add_argument(
        "--imatrix", metavar="FILE", help="quantize with this importance matrix (llama-imatrix)"
    )
    parser.add_argument(
        "--threads", type=whole, default=0, metavar="N", help="threads (default: llama.cpp's)"
    )
    parser.add_argument(
        "--work-dir",
        metavar="DIR",
        help="where the temporary files go (default: beside MODEL)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _tune_parser() -> argparse.ArgumentParser:
    from llmtune.fit.argtypes import whole

    parser = _Parser(
        prog="llmtune tune",
        description="Find the fastest llama.cpp settings that fit here, by real loads and "
        "short benchmarks. Settings you give (--ngl, --flash-attn, --cache-type-k/-v, "
        "--ubatch, --n-cpu-moe, --threads) stay fixed; the others are searched.",
    )
    _add_settings_options(parser, what_if=False)
    parser.add_argument(
        "--objective",
        choices=("tg", "pp", "mix"),
        default="tg",
        help="what to maximise: generation speed (default), prompt speed, or both",
    )
    parser.add_argument(
        "--threads",
        metavar="N[,N...]",
        help="thread counts to try (default: 1, 2, 4, ... and the cores)",
    )
    parser.add_argument(
        "--prompt-tokens", type=whole, metavar="N", help="prompt per trial (tg: 64, else 512)"
    )
    parser.add_argument("--gen-tokens", type=whole, default=64, metavar="N")
    parser.add_argument("--repeat", type=whole, default=3, metavar="N", help="runs per trial")
    parser.add_argument("--max-trials", type=whole, default=40, metavar="N")
    return parser


def _rpc_server_parser() -> argparse.ArgumentParser:
    from llmtune.fit.argtypes import whole

    parser = _Parser(
        prog="llmtune rpc-server",
        description="Lend this machine's devices to llama.cpp on another machine "
        "(llama.cpp's ggml-rpc-server, supervised). No authentication, no encryption: "
        "trusted networks only.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="IPv4 address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=whole, default=50052, help="port to listen on (default 50052)"
    )
    parser.add_argument(
        "--threads", type=whole, metavar="N", help="CPU threads (default: half the cores)"
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="keep received tensors in llama.cpp's cache ($LLAMA_CACHE or ~/.cache/llama.cpp/rpc)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line when ready")
    return parser


def _add_settings_options(
    parser: argparse.ArgumentParser, what_if: bool = True, model: bool = True
) -> None:
    """The plan's settings. ``what_if=False`` (bench, tune: they run on this
    machine) hides the other-hardware options from the help; they still parse,
    so the command can refuse them in one line."""

    def shown(text: str) -> str:
        return text if what_if else argparse.SUPPRESS

    # fit --list-gpus needs no model; fit without one says so like argparse would.
    if model:
        parser.add_argument(
            "model",
            nargs="?" if what_if else None,
            help="a .gguf file" + (" or an https URL" if what_if else ""),
        )
        if what_if:
            _add_hf_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    _add_machine_options(parser, shown)
    parser.add_argument(
        "--list-gpus", action="store_true", help=shown("list the GPU profiles and exit")
    )
    parser.add_argument(
        "--quant",
        metavar="FTYPE",
        help=shown(
            "plan as if quantized to FTYPE (Q4_K_M, Q8_0, ...); 'all' prints every file type"
        ),
    )
    from llmtune.fit.options import add_arguments

    add_arguments(parser)  # --ngl, --ctx, ...: llama.cpp's options, from one table


def _add_machine_options(
    parser: argparse.ArgumentParser, shown: Callable[[str], str] = lambda text: text
) -> None:
    """--gpu, --ram, --host, --rpc, --network: the hardware to plan for (hardware.machine reads them)."""
    parser.add_argument(
        "--gpu",
        action="append",
        default=[],
        metavar="SPEC",
        help=shown(
            "plan for this GPU instead of this machine's: a profile (rtx3060-12g, m2-ultra-192g) "
            "or a size (12GiB, 24GB:1008GB/s, 24GB:936GB/s:71TF); repeat for more GPUs; "
            "see 'llmtune fit --list-gpus'"
        ),
    )
    parser.add_argument(
        "--ram", metavar="SIZE", help=shown("host RAM to plan for (default: this machine's)")
    )
    parser.add_argument(
        "--host", metavar="PROFILE", help=shown("host memory profile, e.g. ddr4-3200, ddr5-5600")
    )
    parser.add_argument(
        "--rpc",
        action="append",
        default=[],
        metavar="HOST:PORT,...",
        help=shown(
            "llama.cpp RPC hosts (ggml-rpc-server or 'llmtune rpc-server') whose devices "
            "take layers too, as llama-server --rpc; HOST:PORT=GPU names the GPU behind one "
            "(its speed); a what-if remote GPU is --gpu SPEC@rpc"
        ),
    )
    parser.add_argument(
        "--network",
        metavar="SPEED",
        help=shown(
            "the link to plan RPC devices with, e.g. 1Gbit, 10Gbit "
            "(default: measured; 1Gbit for a what-if @rpc GPU)"
        ),
    )


def _settings_from_args(args: argparse.Namespace) -> Settings:
    from llmtune.fit.options import settings_from_namespace

    return settings_from_namespace(args)


def _machine_options(args: argparse.Namespace) -> MachineOptions:
    from llmtune.hardware.machine import MachineOptions

    return MachineOptions(
        gpus=tuple(args.gpu),
        ram=args.ram,
        host=args.host,
        rpc=tuple(getattr(args, "rpc", ())),
        network=getattr(args, "network", None),
    )


def cmd_inspect(argv: Sequence[str]) -> int:
    from llmtune.commands import inspect

    return inspect.run(_inspect_parser().parse_args(argv))


def cmd_fit(argv: Sequence[str]) -> int:
    args = _fit_parser().parse_args(argv)
    from llmtune.commands import fit

    if args.list_gpus:
        return fit.list_gpus()
    if args.model is None and args.hf is None:
        _fit_parser().error("the following arguments are required: model (or --hf)")
    return fit.run(args, _settings_from_args(args), _machine_options(args))


def cmd_bench(argv: Sequence[str]) -> int:
    from llmtune.commands import bench

    if "--history" in argv:
        return bench.history(_bench_history_parser().parse_args(argv))
    args = _bench_parser().parse_args(argv)

    return bench.run(args, _settings_from_args(args), _machine_options(args))


def cmd_quantize(argv: Sequence[str]) -> int:
    from llmtune.commands import quantize

    return quantize.run(_quantize_parser().parse_args(argv))


def cmd_quality(argv: Sequence[str]) -> int:
    from llmtune.commands import quality

    return quality.run(_quality_parser().parse_args(argv))


def cmd_tune(argv: Sequence[str]) -> int:
    args = _tune_parser().parse_args(argv)
    from llmtune.commands import tune

    settings = _settings_from_args(args)
    from llmtune.fit.options import given_fields

    # What the user fixed stays fixed; the rest is searched.
    return tune.run(args, settings, _machine_options(args), given_fields(args))


def cmd_rpc_server(argv: Sequence[str]) -> int:
    from llmtune.commands import rpc_server

    return rpc_server.run(_rpc_server_parser().parse_args(argv))


def cmd_search(argv: Sequence[str]) -> int:
    args = _search_parser().parse_args(argv)
    from llmtune.commands import search

    return search.run(args, _settings_from_args(args), _machine_options(args))


def cmd_download(argv: Sequence[str]) -> int:
    from llmtune.commands import download

    return download.run(_download_parser().parse_args(argv))


def cmd_attach(argv: Sequence[str]) -> int:
    args = _attach_parser().parse_args(argv)
    from llmtune.commands import attach
    from llmtune.fit.options import OPTION, given_fields

    settings = _settings_from_args(args)
    given = {f: getattr(settings, f) for f in given_fields(args) if f in OPTION}
    return attach.run(args, given, _machine_options(args))


def cmd_app(argv: Sequence[str]) -> int:
    from llmtune.commands import app

    return app.run(_app_parser().parse_args(argv))


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "inspect": cmd_inspect,
    "fit": cmd_fit,
    "bench": cmd_bench,
    "quantize": cmd_quantize,
    "quality": cmd_quality,
    "tune": cmd_tune,
    "rpc-server": cmd_rpc_server,
    "search": cmd_search,
    "download": cmd_download,
    "attach": cmd_attach,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in COMMANDS:
            return COMMANDS[args[0]](args[1:])
        return cmd_app(args)
    except LlmtuneError as exc:
        if os.environ.get("LLMTUNE_DEBUG"):
            raise
        _fail(exc.one_line())
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error for the user.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 0
    except Exception as exc:  # a bug of ours: still one line, with a way to see more
        if os.environ.get("LLMTUNE_DEBUG"):
            raise
        _fail(
            f"internal error: {type(exc).__name__}: {exc} "
            "(set LLMTUNE_DEBUG=1 for a traceback, and please report it)"
        )


if __name__ == "__main__":
    raise SystemExit(main())

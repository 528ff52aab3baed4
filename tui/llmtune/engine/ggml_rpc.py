"""llama.cpp's own RPC backend, through ctypes on the libraries llama-cpp-python installed.

llama-cpp-python binds llama.h but not ggml-rpc.h, so the few functions llmtune
needs are looked up the way llama.cpp's tools do: the RPC registry by name,
then its functions through ``ggml_backend_reg_get_proc_address``
(common/arg.cpp add_rpc_devices, tools/rpc/rpc-server.cpp main).

The wheel ships ``libggml.so``, ``libggml.so.0`` and ``libggml.so.0.x`` as three
copies of one file, each with its own backend registry once loaded; libllama
links ``libggml.so.0`` and ``libggml-base.so.0`` (``ldd libllama.so``), so those
are the ones opened here, and a server registered through them is one the model
loader sees. Nothing is loaded until a function here is called.

RPC servers must be registered before a model loads: llama.cpp picks its
devices when the model is created (src/llama.cpp llama_model_load_from_file_impl
puts RPC devices first in the list).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtune.hardware.rpc import RpcError, parse_endpoints, probe

RPC_REBUILD_HINT = (
    "this llama-cpp-python was built without llama.cpp's RPC backend; rebuild it with "
    'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir '
    "llama-cpp-python==0.3.36 (in a checkout, make run and make test do it)"
)

# ggml-backend.h enum ggml_backend_dev_type.
DEV_TYPE_CPU = 0
DEV_TYPE_GPU = 1
DEV_TYPE_IGPU = 2
DEV_TYPE_ACCEL = 3
DEV_TYPE_META = 4
_DEV_TYPE_NAMES = {
    DEV_TYPE_CPU: "CPU",
    DEV_TYPE_GPU: "GPU",
    DEV_TYPE_IGPU: "IGPU",
    DEV_TYPE_ACCEL: "ACCEL",
    DEV_TYPE_META: "META",
}

# ggml-rpc.h: ggml_backend_reg_t ggml_backend_rpc_add_server(const char * endpoint);
_ADD_SERVER_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
# ggml-rpc.h: void ggml_backend_rpc_start_server(const char * endpoint, const char * cache_dir,
#                                                size_t n_threads, size_t n_devices, ggml_backend_dev_t * devices);
_START_SERVER_FN = ctypes.CFUNCTYPE(
    None,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_void_p),
)


@dataclass(frozen=True)
class LocalDevice:
    """A device of this process's llama.cpp (ggml_backend_dev_*)."""

    name: str
    description: str
    kind: str  # CPU, GPU, IGPU, ACCEL
    free_bytes: int
    total_bytes: int


class _Ggml:
    """The ggml functions used here, typed, from the libraries libllama links."""

    def __init__(self, lib_dir: Path) -> None:
        # RTLD_GLOBAL as llama-cpp-python loads libllama (_ctypes_extensions.load_shared_library).
        base = ctypes.CDLL(str(lib_dir / "libggml-base.so.0"), mode=ctypes.RTLD_GLOBAL)
        ggml = ctypes.CDLL(str(lib_dir / "libggml.so.0"), mode=ctypes.RTLD_GLOBAL)
        vp, cp, size = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t

        def bind(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = list(argtypes)
            return fn

        # ggml-backend.h, registry (ggml-backend-reg.cpp, in libggml).
        self.reg_by_name = bind(ggml, "ggml_backend_reg_by_name", vp, cp)
        self.register = bind(ggml, "ggml_backend_register", None, vp)
        self.dev_count = bind(ggml, "ggml_backend_dev_count", size)
        self.dev_get = bind(ggml, "ggml_backend_dev_get", vp, size)
        self.dev_by_name = bind(ggml, "ggml_backend_dev_by_name", vp, cp)
        self.dev_by_type = bind(ggml, "ggml_backend_dev_by_type", vp, ctypes.c_int)
        # ggml-backend.h, devices and registries (ggml-backend.cpp, in libggml-base).
        self.reg_get_proc_address = bind(base, "ggml_backend_reg_get_proc_address", vp, vp, cp)
        self.reg_dev_count = bind(base, "ggml_backend_reg_dev_count", size, vp)
        self.reg_dev_get = bind(base, "ggml_backend_reg_dev_get", vp, vp, size)
        self.dev_name = bind(base, "ggml_backend_dev_name", cp, vp)
        self.dev_description = bind(base, "ggml_backend_dev_description", cp, vp)
        self.dev_type = bind(base, "ggml_backend_dev_type", ctypes.c_int, vp)
        self.dev_memory = bind(
            base, "ggml_backend_dev_memory", None, vp, ctypes.POINTER(size), ctypes.POINTER(size)
        )
        self.dev_buffer_type = bind(base, "ggml_backend_dev_buffer_type", vp, vp)
        self.buft_name = bind(base, "ggml_backend_buft_name", cp, vp)


def _lib_dir() -> Path | None:
    """Where llama-cpp-python keeps its libraries (llama_cpp/llama_cpp.py: LLAMA_CPP_LIB_PATH or lib/)."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


@functools.cache
def _ggml() -> _Ggml | None:
    lib_dir = _lib_dir()
    if lib_dir is None:
        return None
    try:
        return _Ggml(lib_dir)
    except (OSError, AttributeError):
        return None


def _rpc_reg(g: _Ggml) -> int | None:
    reg = g.reg_by_name(b"RPC")
    return int(reg) if reg else None


def rpc_supported() -> bool:
    """Whether the installed llama.cpp has the RPC backend (src/llama.cpp llama_supports_rpc
    asks the same question: ggml_backend_reg_by_name("RPC"))."""
    g = _ggml()
    return g is not None and _rpc_reg(g) is not None


def _require_rpc() -> tuple[_Ggml, int]:
    g = _ggml()
    reg = _rpc_reg(g) if g is not None else None
    if g is None or reg is None:
        raise RpcError(RPC_REBUILD_HINT)
    return g, reg


def _proc(g: _Ggml, reg: int, name: str) -> int:
    address = g.reg_get_proc_address(reg, name.encode())
    if not address:
        raise RpcError(f"this llama.cpp's RPC backend has no {name}; {RPC_REBUILD_HINT}")
    return int(address)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def register_servers(endpoints: Iterable[str], timeout_s: float = 3.0) -> tuple[str, ...]:
    """Add RPC servers to this process's llama.cpp, as ``--rpc`` does (common/arg.cpp
    add_rpc_devices); returns the names of their devices (``RPC0``, ``RPC1``, ...).

    Each server is probed first: llama.cpp's client aborts the whole process when
    a server is down or speaks another protocol (ggml-rpc.cpp rpc_dispatcher::start,
    GGML_ABORT), and a probe turns that into an :class:`RpcError` naming the host.
    Adding the same endpoint again returns its devices again (ggml_backend_rpc_add_server
    keeps one registry per endpoint). Call it before a model loads.
    """
    wanted = parse_endpoints(",".join(endpoints))
    g, reg = _require_rpc()
    add_server = _ADD_SERVER_FN(_proc(g, reg, "ggml_backend_rpc_add_server"))
    names: list[str] = []
    for endpoint in wanted:
        probe(endpoint, timeout_s=timeout_s, measure_bandwidth=False)
        server_reg = add_server(endpoint.encode())
        if not server_reg:
            # ggml_backend_rpc_add_server returns NULL when the server reports no devices.
            raise RpcError(
                f"{endpoint}: llama.cpp could not add the RPC server (it lends no devices)"
            )
        g.register(server_reg)
        for i in range(int(g.reg_dev_count(server_reg))):
            names.append(_text(g.dev_name(g.reg_dev_get(server_reg, i))))
    return tuple(names)


def buffer_types() -> dict[str, int]:
    """Every device's buffer type by its name (``CPU``, ``CUDA0``, ``RPC0[host:port]``),
    as ``-ot`` resolves them (common/arg.cpp ``parse_tensor_buffer_overrides``);
    empty when llama.cpp's libraries cannot be found."""
    g = _ggml()
    if g is None:
        return {}
    out: dict[str, int] = {}
    for i in range(int(g.dev_count())):
        buft = g.dev_buffer_type(g.dev_get(i))
        if buft:
            out[_text(g.buft_name(buft))] = int(buft)
    return out


def _memory(g: _Ggml, dev: object) -> tuple[int, int]:
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    g.dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return int(free.value), int(total.value)


def device_memory(name: str) -> tuple[int, int] | None:
    """(free, total) bytes of the device called ``name`` (``RPC0``, ``CPU``), or None
    when this process has no such device.

    For an RPC device this is a ``GET_DEVICE_MEMORY`` on llama.cpp's connection to
    its server (ggml-rpc.cpp ggml_backend_rpc_get_device_memory): the model's own
    connection while one is loaded, a new one otherwise, and llama.cpp aborts the
    process if that server is gone, so probe it first when no model holds it.
    """
    g = _ggml()
    if g is None:
        return None
    dev = g.dev_by_name(name.encode())
    if not dev:
        return None
    return _memory(g, dev)


def local_devices() -> tuple[LocalDevice, ...]:
    """Every device this process's llama.cpp has registered (ggml_backend_dev_get)."""
    g = _ggml()
    if g is None:
        return ()
    return tuple(_local_device(g, g.dev_get(i)) for i in range(int(g.dev_count())))


def _local_device(g: _Ggml, dev: object) -> LocalDevice:
    kind = int(g.dev_type(dev))
    free, total = _memory(g, dev)
    return LocalDevice(
        name=_text(g.dev_name(dev)),
        description=_text(g.dev_description(dev)),
        kind=_DEV_TYPE_NAMES.get(kind, "?"),
        free_bytes=free,
        total_bytes=total,
    )


def _server_devices(g: _Ggml, device_names: Sequence[str] | None) -> list[int]:
    """The devices a server lends, chosen as tools/rpc/rpc-server.cpp get_devices does:
    those named, else every device that is not the CPU or an accelerator add-on,
    else the CPU."""
    if device_names:
        chosen: list[int] = []
        for name in device_names:
            dev = g.dev_by_name(name.encode())
            if not dev:
                available = ", ".join(d.name for d in local_devices()) or "none"
                raise RpcError(f"no device named {name!r} here (available: {available})")
            chosen.append(dev)
        return chosen
    chosen = []
    for i in range(int(g.dev_count())):
        dev = g.dev_get(i)
        if dev and g.dev_type(dev) not in (DEV_TYPE_CPU, DEV_TYPE_ACCEL):
            chosen.append(dev)
    if not chosen:
        cpu = g.dev_by_type(DEV_TYPE_CPU)
        if cpu:
            chosen.append(cpu)
    if not chosen:
        raise RpcError("llama.cpp found no devices to lend")
    return chosen


def start_server(
    endpoint: str,
    cache_dir: str | None,
    n_threads: int,
    device_names: Sequence[str] | None = None,
) -> None:
    """Run llama.cpp's RPC server in this process (ggml-rpc.cpp ggml_backend_rpc_start_server,
    as tools/rpc/rpc-server.cpp main calls it). It serves until the process is
    killed; it returns only when llama.cpp could not start, and then raises
    :class:`RpcError` (llama.cpp has printed why on stdout or stderr)."""
    g, reg = _require_rpc()
    start = _START_SERVER_FN(_proc(g, reg, "ggml_backend_rpc_start_server"))
    devices = _server_devices(g, device_names)
    array = (ctypes.c_void_p * len(devices))(*devices)
    start(
        endpoint.encode(),
        cache_dir.encode() if cache_dir else None,
        max(1, n_threads),
        len(devices),
        ctypes.cast(array, ctypes.POINTER(ctypes.c_void_p)),
    )
    raise RpcError(f"llama.cpp's RPC server on {endpoint} stopped")

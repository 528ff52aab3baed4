"""What the machine is: GPUs via NVML, the host via psutil, known GPU profiles, bandwidth probe.

- ``device``: the Device the planner works with.
- ``nvml``: one never-raising snapshot of every NVIDIA GPU per call; CPU-only without NVML.
- ``detect``: Devices for this machine, host facts, llama.cpp's CPU features and offload support.
- ``host``: the host as a Device (``host_device`` is pure; ``host_device_measured`` reads the
  bandwidth cache).
- ``bandwidth``: the host memory-bandwidth probe and its per-machine cache.
- ``profiles``: known GPUs and host memory, for planning on hardware that is not here.

Submodules are imported on use, so ``llmtune.fit`` pays only for ``device``.
"""

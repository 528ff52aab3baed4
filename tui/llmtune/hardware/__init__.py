"""What the machine is: GPUs via NVML, the host via psutil, known GPU profiles, bandwidth probe."""

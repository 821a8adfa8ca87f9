"""What every benchmark prints about where it ran (these machines are shared and noisy)."""

from __future__ import annotations

import os
import platform
import sys


def machine() -> dict:
    import torch

    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next(
            (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), ""
        )
        flags = " ".join(sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in info))
    except OSError:
        model = platform.processor()
    return {
        "cpu": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }

"""What every benchmark prints first: the machine it measured on."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")

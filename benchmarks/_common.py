"""What the benchmark scripts share (imported by name: benchmarks/ is their folder, not a package)."""

import os
import platform
import time


def machine(extra=""):
    """One line naming the machine, for a benchmark's output: CPU model and cores, Python and
    NumPy versions, ``extra`` (e.g. ", npvae 0.1.0 (backend numpy)") and the date and time."""
    import numpy as np

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, NumPy {np.__version__}{extra}; "
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}")

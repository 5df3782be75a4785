"""Process-wide settings applied by every entry point (CLI and nodes)."""
from __future__ import annotations

import os
import sys


def limit_threads() -> None:
    """One intra-op thread for torch/BLAS unless the user chose (``OMP_NUM_THREADS``).

    The project's networks are small MLPs driven one batch at a time; on a CPU shared with a
    simulator, DDS and other nodes, extra intra-op threads oversubscribe the cores. Measured on a
    loaded 2-core machine: 1000 BC steps took 314 s with torch's default threads and 9.7 s with
    one. Set OMP_NUM_THREADS to use more.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)

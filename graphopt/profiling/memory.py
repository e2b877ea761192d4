"""Process and GPU memory, read around engine creation and timing.

* ``rss_bytes()``: the process's resident set now (``/proc/self/statm`` on Linux, psutil elsewhere);
* ``peak_rss_bytes()``: the process's peak resident set so far (``getrusage``; it never goes down, so it
  covers everything the run did, not one engine);
* ``gpu_memory_in_use()``: device memory in use on GPU 0 by every process (CUDA driver), or ``None``
  without a GPU. Differences before/after creating an engine are what that engine took.
"""

from __future__ import annotations

import os
import resource
import sys


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import psutil
        except ImportError:
            return 0
        return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def gpu_memory_in_use() -> int | None:
    from graphopt.target import cuda_gpus

    if not cuda_gpus():
        return None
    from graphopt.engines import cuda_driver

    try:
        return cuda_driver.memory_in_use(0)
    except cuda_driver.CudaError:
        return None

"""numba's threading set-up, shared by every compiled kernel of the project.

Imported before any parallel kernel runs: numba's "omp" layer (GNU OpenMP) terminates forked
children such as DataLoader workers, so the fork-safe layer is chosen unless the user picked one
with ``NUMBA_THREADING_LAYER``. That layer aborts the process when two Python threads run parallel
kernels at once, so every call goes through :func:`parallel_kernel`, which serialises them. Kernels
use as many threads as torch (``torch.set_num_threads``), so a thread budget set for torch holds
for them too.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import numba
import torch

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "forksafe"

_LOCK = threading.Lock()


@contextmanager
def parallel_kernel(work_items: int | None = None) -> Iterator[int]:
    """Hold the kernel lock with numba's thread count set to torch's (at most ``work_items``, at
    least 1); yields that count."""
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if work_items is not None:
        threads = min(threads, work_items)
    threads = max(1, threads)
    with _LOCK:
        numba.set_num_threads(threads)
        yield threads

"""glibc malloc settings for this process: one home for the policies exp2sim uses.

Large NumPy arrays and tensors come from malloc. With glibc's defaults, blocks above its
mmap threshold (adaptive, at most 32 MiB) are mapped from the kernel on every allocation
and handed back on every free, so each new array is filled page by page through page
faults, and freed memory at the top of the heap is trimmed back to the kernel as well.

- `keep_freed_memory` (training and translating on the CPU): every block from the heap,
  never trimmed, so later steps reuse the same pages. A process running four paper-
  configuration training steps (one warm-up, three timed) on a 2-core Xeon: median step
  8.39 s and 5.5 million minor page faults with the defaults, 7.62 s and 1.1 million with
  this setting; peak RSS 4,352 and 4,475 MiB. The price: the process keeps its peak
  memory until it exits, and the heap can settle above the live peak (posix_memalign's
  slack keeps a freed block from serving the next request of the same size until it merges
  with a neighbour: a loop making three 40 MiB temporaries settled at 583 MiB RSS against
  263 MiB with the defaults). PyTorch's CPU tuning guide recommends jemalloc or tcmalloc
  for the same reason; this needs neither.
- `restore_adaptive_thresholds` (Dask workers computing spectra): undo the nanny's
  MALLOC_TRIM_THRESHOLD_, which also froze the mmap threshold at 128 KiB.

On other C libraries (macOS, musl) nothing is changed and the functions return False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import lru_cache

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def set_malloc(settings: dict[int, int]) -> bool:
    """mallopt(parameter, value) for each item; whether all of them took effect."""
    libc = _libc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in settings.items())


def trim() -> bool:
    """Hand the freed memory malloc holds back to the system now (malloc_trim)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Serve every block from malloc's heap and never trim it (see the module docstring).
    Once per process; returns whether it is in effect."""
    return set_malloc({M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1})


@lru_cache(maxsize=1)
def restore_adaptive_thresholds() -> bool:
    """Undo, in this process, what Dask's nanny does to glibc's malloc in its workers.

    The nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (so that freed memory goes
    back to the system at once). Setting it also freezes glibc's mmap threshold at 128 KiB,
    so every large temporary array becomes a fresh mmap whose pages fault in one by one:
    the spectrum calculators ran 1.9x slower on the workers than outside them (3.9 vs 2.1 s
    per Monte Carlo mosaic, measured). Restores the thresholds' adaptive maxima: allocations
    up to 32 MiB come from the heap, and up to 128 MiB of freed memory is kept."""
    return set_malloc({M_MMAP_THRESHOLD: 32 * 2**20, M_TRIM_THRESHOLD: 128 * 2**20})

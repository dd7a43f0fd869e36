"""Keep the C heap's freed memory in the training process, so a step does not page-fault its tensors in again.

A CPU training step frees and reallocates the same large buffers every step (activations and their gradients, the
token embedding's dense gradient: 25 MB for the built-in model). glibc's malloc serves blocks that large with their
own `mmap` and gives them back on `free`, so each step touches fresh pages and the kernel faults in and zeroes
every one of them: about 40,000 page faults per step of the built-in model, a sixth of its time on the 2-core CPUs
measured. Raising malloc's mmap and trim thresholds keeps those blocks in the heap for the next step. It changes
where tensors live, not what is computed: a run with it gives bit-identical weights (tested).

The settings are process-wide and not undone (the process keeps its peak heap until it exits), so the training
entry points (`edgeclip train`, `edgeclip.train.run.run`) apply them, as they set the torch thread count; the
runtime, which gives memory back on purpose (`OrtOptions.shrink_arena`), never does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import sys

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to 1 GiB come from the heap; the heap's top is never trimmed (the largest value mallopt takes).
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 2**31 - 1


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse; True where it took the settings, False where this is not
    glibc (macOS, Windows, musl: their allocators are left as they are)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success; an explicit mmap threshold also stops glibc from moving it itself.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

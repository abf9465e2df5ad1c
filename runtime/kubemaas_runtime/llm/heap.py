"""On CPU, memory an engine step frees stays in the process's heap for the next step.

Every step allocates its attention's gathered keys and values afresh, and they are large: 16
decode rows of a 560-token context on the small benchmark model (8 KV heads of 64) are 18 MB per
tensor per layer. glibc serves an allocation that large with mmap (above a threshold that adapts
up to 32 MB) and hands it back to the kernel when it is freed, so the next step page-faults and
zeroes the same memory again. Measured on one core (16 rows, that model's shapes, gather plus
attention of one layer): 36.1 ms at 1,040 tokens of context against 12.9 ms with freed memory
kept, 70.9 against 22.5 ms at 2,000, 2.9 against 1.8 ms at 320; served, the streams' gaps grew
with the answer's length much faster than vLLM's (docs/llm-benchmark.md, "Long answers").

So once the model is loaded on CPU, the engine asks glibc (``mallopt``) to serve nothing with
mmap and to keep up to ``KEEP_FREE_BYTES`` free at the heap's top. The price is that resident
memory does not fall back after a large step; it stays bounded by the largest step's
activations (``--max-num-batched-tokens``), the KV cache being allocated once at start. Without
glibc (musl, macOS) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4
KEEP_FREE_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; False where that is not glibc or it refused."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREE_BYTES))

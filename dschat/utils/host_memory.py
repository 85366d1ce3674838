"""Give freed activation memory back to the OS, so a step's peak RSS is what it uses, not what it once used.

glibc's malloc serves large blocks from mmap only until the first one is freed; then it raises its threshold
(up to 32 MB) and serves activation-sized tensors (a few MB each) from its heap, where freed blocks stay
mapped and fragment: measured on SmolLM2-135M at packed 4 x 512 in fp32 on CPU, peak RSS 6.0 GB against 5.1 GB
with a fixed 1 MB threshold, at the same step time (bench/RESULTS.md, memory section). Setting the threshold
(``mallopt(M_MMAP_THRESHOLD)``) makes every block of 1 MB or more its own mapping, returned on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD_BYTES = 1 << 20
ENV = "DSCHAT_MMAP_THRESHOLD"  # bytes; 0 leaves the allocator as it is


def return_freed_memory_to_os() -> int | None:
    """Set glibc's mmap threshold (``$DSCHAT_MMAP_THRESHOLD`` bytes, default 1 MB); the value set, or None where
    it was left alone (0, a MALLOC_MMAP_THRESHOLD_ of the user's, or no glibc)."""
    threshold = int(os.environ.get(ENV, THRESHOLD_BYTES))
    if threshold <= 0 or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        done = libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to tune
        return None
    return threshold if done else None

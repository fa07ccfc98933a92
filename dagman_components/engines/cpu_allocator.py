"""Keep freed CPU memory in the process, so a training step's large tensors cost no page faults.

PyTorch's CPU tensors come from glibc ``malloc``. glibc serves every request above its mmap threshold
(at most 32 MiB) with a fresh ``mmap`` and returns it to the kernel on ``free``, so each step
page-faults its large activations, gradients and temporaries in again, one 4 KiB page at a time.
At 96^3 / feature size 48 a DAGMaN-sized step touches about 7 GB of fresh pages (1.7 million minor
faults per step of the fast forward, 5.7 million with MONAI's) and the kernel's time for them is of
the order of the step's own arithmetic. :func:`configure_cpu_malloc` turns glibc's ``mmap`` use and
heap trimming off (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, -1)``): freed memory
stays in the heap and the next step reuses it without a fault. The arithmetic is unchanged.

The setting is process-wide and lasts until the process exits; the process keeps its peak heap
(resident memory does not fall back after the peak), and DataLoader workers forked afterwards inherit it.
It is off by default (``system``): without mmap, freed blocks are reused only where the next request
fits, so a process whose allocation pattern changes grows its heap. Measured: at 96^3 / F=48 a training
step repeated in one process peaks a few per cent above glibc's default, but the benchmark, which
alternates five different steps in one process, grew to 15 GB instead of 10 GB and was killed by the
kernel. Use ``keep`` for a long CPU run of one configuration. On CUDA the large tensors live in
PyTorch's caching allocator already, and ``keep`` leaves glibc alone there; other C libraries (musl,
macOS, Windows) are left alone too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

import torch

__all__ = ["CPU_MALLOC_MODES", "configure_cpu_malloc"]

logger = logging.getLogger(__name__)

#: ``system``: glibc's defaults; ``keep``: keep freed memory for reuse when training on a CPU
CPU_MALLOC_MODES = ("system", "keep")

# glibc's <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_configured: str | None = None


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def configure_cpu_malloc(mode: str = "system", device: torch.device | str | None = None) -> bool:
    """Apply ``mode`` to this process's glibc allocator; True when freed memory is now kept.

    Args:
        mode: one of :data:`CPU_MALLOC_MODES`; ``keep`` acts only when ``device`` is a CPU (or None).
        device: the device the training runs on.

    ``system`` after ``keep`` does not restore glibc's defaults (mmap use stays off): the mode is
    meant to be set once, at the start of a run. Returns False without glibc.
    """
    global _configured
    if mode not in CPU_MALLOC_MODES:
        raise ValueError(f"cpu_malloc must be one of {CPU_MALLOC_MODES}, got {mode!r}.")
    if device is not None and torch.device(device).type != "cpu":
        mode = "system"
    if mode == "system":
        return _configured == "keep"
    if _configured == "keep":
        return True
    libc = _glibc()
    if libc is None:
        logger.info("cpu_malloc: not glibc, the C library's allocator is left as it is")
        return False
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, -1)):
        logger.warning("cpu_malloc: glibc refused mallopt(M_MMAP_MAX / M_TRIM_THRESHOLD); allocator unchanged")
        return False
    _configured = "keep"
    logger.info("cpu_malloc: keep (glibc mmap and heap trimming off: freed memory is reused without page faults)")
    return True

"""Keep the memory a training step frees for the next step: glibc malloc's settings, chosen before the backend starts.

A training step allocates the same large buffers every step. XLA:CPU takes
them from ``malloc`` (conv1's im2col patches and their gradient are 85 MB each
at batch 128), and glibc serves any request above its mmap threshold (at most
32 MB) with a fresh ``mmap`` that ``free`` hands back to the kernel; threads
other than the main one get their own arenas, which glibc trims as they empty.
So each step faulted its buffers' pages in anew: about 50,000 page faults, 200 MB
zeroed by the kernel, per JAX training step. Telling malloc to serve everything
from one heap (``M_ARENA_MAX`` 1, ``M_MMAP_MAX`` 0) and never to trim it
(``M_TRIM_THRESHOLD``) takes that to none: JAX trained 1.6-2.2x and predicted
2.9-3.5x faster (docs/performance.md, "Choices per CPU"). ``runtime.start`` sets
it for JAX only: TensorFlow, whose allocations are many and small, was not
measured faster with it.

The price is that the process keeps its peak heap until it exits, which is
what a training or prediction process wants. Only glibc's malloc has these
knobs; a user who set any of glibc's malloc variables (or preloads another
allocator) keeps their choice.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))  # the largest value an int takes

# A user who set any of these chose their own allocator policy.
USER_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                  "MALLOC_TOP_PAD_")
_state = {"allocator": None}


def libc_name() -> str:
    """``glibc``, or ``unknown`` (musl, macOS, Windows)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").split()[0]
    except (AttributeError, ValueError, OSError, IndexError):
        return "unknown"


def policy(environ, libc: str) -> str:
    """What ``keep_freed_memory`` does in a process with ``environ`` and C library ``libc``
    (``libc_name()``): ``keep`` (set glibc's malloc to keep freed memory), or why not."""
    if libc != "glibc":
        return "not glibc"
    if any(name in environ for name in USER_VARIABLES) or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return "user's malloc settings"
    if any(name in environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "user's preloaded allocator"
    return "keep"


def keep_freed_memory(environ=os.environ) -> str:
    """Apply ``policy`` to this process, once, before JAX starts its threads; returns what it decided:
    ``kept`` (set), or the reason it left malloc alone. Recorded with every result (``runtime.machine``)."""
    if _state["allocator"] is not None:
        return _state["allocator"]
    decision = policy(environ, libc_name())
    if decision == "keep":
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
            decision = "kept" if all(mallopt(param, value) == 1 for param, value in SETTINGS) else "mallopt refused"
        except (OSError, AttributeError):
            decision = "mallopt unavailable"
    _state["allocator"] = decision
    return decision


def state() -> str | None:
    """This process's decision, or None when ``keep_freed_memory`` has not run (a process that did not start a backend)."""
    return _state["allocator"]

"""Releasing a thread's OpenMP thread pool: ``release_openmp_pool``.

torch's CPU kernels (and MKL's matmuls) run their parallel regions on GNU
OpenMP (libgomp, bundled in torch/lib). libgomp gives every thread that starts
a parallel region a pool of its own, and it lets that pool's threads spin
between regions only while the process's pool threads, all pools together, are
no more than its CPUs. Once two threads each hold a pool (on a 2-core machine:
the thread that loaded the model and ran the start-up probes, and the
batcher's thread), the spin is throttled and the pool threads sleep on a futex
between regions, so every one of the ~hundred parallel regions of a decode
step pays a wake-up. Measured on the 2-core CPU machine with SmolLM2-135M: a
32-row decode step 84-92 ms on a thread whose pool is the only one, 108-117 ms
with a second pool alive; 1 row 32-33 ms against 51-54 ms; one matmul alone
87-89 us against 150-155 us. ``omp_pause_resource_all`` (OpenMP 5.0) frees the
calling thread's pool, and with it the penalty; the next parallel region on
that thread makes a new pool (one thread start, tens of microseconds). In
bench.worker (--streams 1,32 --tokens 32): the worker at 1 stream 17-19 tok/s
with two pools, 27-30 with one; at 32 streams 157-237 against 277-309. An idle
batcher's pool slows torch work elsewhere the same way (model.generate beside
it: 17-18 tok/s kept, 27-28 freed), so the batcher frees it while idle.

Not every build has it (another OpenMP runtime, macOS, a libgomp before GCC 9):
then this is a no-op.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: free the threads, keep nothing to resume


def _find_pause_functions() -> tuple:
    """``omp_pause_resource_all`` of each libgomp loaded in this process (torch's own
    copy, or a system one), found through /proc/self/maps; none where there is none."""
    try:
        with open("/proc/self/maps") as maps:  # address, perms, offset, dev, inode, path
            mapped = {fields[5].strip() for line in maps
                      if len(fields := line.split(None, 5)) == 6}
    except OSError:  # not Linux
        return ()
    paths = {path for path in mapped if os.path.basename(path).startswith("libgomp")}
    found = []
    for path in sorted(paths):
        try:  # RTLD_NOLOAD: the copy already loaded, never a second one
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            pause = library.omp_pause_resource_all
        except (OSError, AttributeError):  # gone, or a libgomp without OpenMP 5.0
            continue
        pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
        found.append(pause)
    return tuple(found)


_lock = threading.Lock()
_found: tuple | None = None  # once looked up with torch (and so its libgomp) loaded


def release_openmp_pool() -> bool:
    """Free the OpenMP thread pool of the calling thread (not another thread's: call
    it on the thread whose torch work is done). Whether a libgomp took the call; False,
    doing nothing, where torch's OpenMP is not a libgomp that has it. Safe to call any
    number of times, with or without a pool; never from inside a parallel region."""
    global _found
    with _lock:
        functions = _found
        if functions is None:
            functions = _find_pause_functions()
            if "torch" in sys.modules:  # before torch, its libgomp may not be loaded yet
                _found = functions
    return bool(functions) and all(pause(OMP_PAUSE_SOFT) == 0 for pause in functions)

"""workers.omp: freeing a thread's OpenMP pool is safe whether or not there is one,
and a no-op where torch's OpenMP is not a libgomp that can."""
import os
import threading

import torch

from workers import omp


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_release_is_idempotent_with_and_without_a_pool():
    out = {}

    def work():
        a = torch.randn(256, 256)
        out["before"] = (a @ a).sum().item()
        out["first"] = omp.release_openmp_pool()
        out["second"] = omp.release_openmp_pool()  # no pool any more
        out["after"] = (a @ a).sum().item()  # torch works on: a new pool
        out["third"] = omp.release_openmp_pool()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert out["before"] == out["after"]
    assert out["first"] == out["second"] == out["third"]  # available or not, alike each time


def test_release_frees_the_pool_threads_where_libgomp_has_it():
    if not omp.release_openmp_pool() or torch.get_num_threads() < 2:
        return  # nothing to free here: another runtime, or one CPU thread
    seen = {}

    def work():
        a = torch.randn(512, 512)
        a @ a
        seen["with_pool"] = _threads()
        omp.release_openmp_pool()
        seen["released"] = _threads()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen["released"] < seen["with_pool"]


def test_no_libgomp_is_a_no_op(monkeypatch):
    monkeypatch.setattr(omp, "_found", ())
    assert omp.release_openmp_pool() is False
    assert omp.release_openmp_pool() is False


def test_a_libgomp_without_the_call_is_skipped(monkeypatch, tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /nowhere/libgomp.so.1\n"
                    "7f01-7f02 r-xp 00000000 08:01 2 [heap]\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        maps if path == "/proc/self/maps" else path, *a, **k))
    assert omp._find_pause_functions() == ()  # not loadable: skipped, no error

"""glibc malloc keeps the memory a step frees (allocator.py): the policy, and its effect on page faults in a real process."""

import json
import os
import subprocess
import sys

import pytest

from mnist_multibackend import allocator

glibc_only = pytest.mark.skipif(allocator.libc_name() != "glibc", reason="mallopt is glibc's")


@pytest.mark.parametrize("environ, libc, expected", [
    ({}, "glibc", "keep"),
    ({"PATH": "/usr/bin", "GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=2048"}, "glibc", "keep"),
    ({}, "unknown", "not glibc"),
    ({"MALLOC_ARENA_MAX": "4"}, "glibc", "user's malloc settings"),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "glibc", "user's malloc settings"),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "glibc", "user's malloc settings"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "glibc", "user's malloc settings"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "glibc", "user's preloaded allocator"),
    ({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, "glibc", "user's preloaded allocator"),
])
def test_policy_leaves_a_users_choice_and_other_libcs_alone(environ, libc, expected):
    assert allocator.policy(environ, libc) == expected


# A child mallocs, fills and frees 64 MB (above glibc's largest mmap threshold) ten times, as a step does its
# buffers, and reports its minor page faults per round after the first: with mmap, every round faults all
# 16,384 pages in again. (ctypes, not numpy: numpy asks for huge pages, which hides the count.)
CHILD = """
import ctypes, json, resource, sys
from mnist_multibackend import allocator
decided = allocator.keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 * 2**20
def round_trip():
    buffer = libc.malloc(size)
    ctypes.memset(buffer, 1, size)
    libc.free(buffer)
round_trip()  # the first round faults its pages in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round_trip()
print(json.dumps({"decided": decided, "state": allocator.state(),
                  "faults_per_round": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10}))
"""


def _child(mode: str, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=environ, check=True)
    return json.loads(done.stdout)


@glibc_only
def test_kept_memory_is_not_faulted_in_again():
    kept, default = _child("keep"), _child("default")
    assert kept["decided"] == kept["state"] == "kept"
    assert default["state"] is None
    assert default["faults_per_round"] > 10_000  # glibc's default: a fresh mapping every round
    assert kept["faults_per_round"] < 100


@glibc_only
def test_a_users_malloc_variable_wins():
    child = _child("keep", MALLOC_ARENA_MAX="2")
    assert child["decided"] == "user's malloc settings"
    assert child["faults_per_round"] > 10_000  # left as glibc's default: nothing was set

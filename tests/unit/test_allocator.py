"""A worker keeps the memory it frees for its next batch instead of faulting in fresh pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.runtime import allocator
from engine.runtime.allocator import on_glibc

# 20 batches that each allocate and fill 100 blocks of 256 KiB (25 MiB, like a batch's result
# buffers), then free them all; print the page faults the batches took.
_PROGRAM = """
import ctypes, resource, sys
if sys.argv[1] == "keep":  # the module alone, by its file: importing engine.runtime would import Ray
    import importlib.util
    spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])
    allocator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(allocator)
    assert allocator.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 10
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    blocks = [libc.malloc(size) for _ in range(100)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode, allocator.__file__],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(
    not on_glibc(), reason="the thresholds are glibc's; elsewhere keep_freed_memory does nothing"
)
def test_freed_blocks_are_reused_without_new_page_faults() -> None:
    fresh, kept = _faults("fresh"), _faults("keep")
    # glibc hands back the freed 25 MiB (6,400 pages) after batches and faults them in again;
    # kept, only the first batch faults its pages in
    first_batch = 6_400
    assert fresh > 3 * first_batch
    assert kept < 1.5 * first_batch


def test_it_applies_once_per_process() -> None:
    from engine.runtime.allocator import keep_freed_memory

    assert keep_freed_memory() is keep_freed_memory()

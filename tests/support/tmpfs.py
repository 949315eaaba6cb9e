"""A small real file system for disk-full tests: a tmpfs of a few megabytes mounted for one test.

`mount` needs root (the test machines run the suite as root). Where it is not permitted the test
is skipped with the reason, except under CI=true, where a skipped disk-full test would hide that
the guarantee is untested: there it fails. `fill` takes every free byte with one file; removing
that file gives the space back.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHUNK = 1 << 16


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@contextmanager
def small_tmpfs(where: Path, size: str = "8m") -> Iterator[Path]:
    """Mount a tmpfs of `size` at `where` (created), yield it, unmount it (lazily: a process that
    still holds a file in it must not fail the teardown)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root): {mounted.stderr.strip() or mounted.returncode}"
        if _in_ci():
            pytest.fail(f"{reason}; under CI=true the disk-full tests must run")
        pytest.skip(reason)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(path: Path, leave: int = 0) -> int:
    """Grow the file at `path` until the file system has no byte left, then give `leave` bytes
    back; the file's size."""
    written = 0
    with path.open("ab", buffering=0) as f:
        block = b"\0" * CHUNK
        while True:
            try:
                written += f.write(block)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                break
        for size in (4096, 512, 1):  # the last partial blocks
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError:
                    break
        written = max(0, written - leave)
        f.truncate(written)
    return written

"""Peak resident memory of a benchmark's worker process, for the benchmarks in this folder.

Linux's VmHWM, which `reset()` clears: not ru_maxrss, which for a child also holds its parent's
RSS at the fork (before the exec), and cannot be reset.
"""

from __future__ import annotations

import resource


def reset() -> bool:
    """Set the peak to the current RSS; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_kib() -> int:
    """This process's peak RSS since start or the last reset(), in KiB."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

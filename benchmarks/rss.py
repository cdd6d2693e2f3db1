"""Resident memory of this process, for the benchmarks' per-case peaks (Linux ``/proc``)."""

from __future__ import annotations


def status_mb(key: str) -> float:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: peak since exec or reset) in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1e3
    return float("nan")


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) so that the next reading is one case's peak; False when
    the kernel does not allow it (the peak is then since the process started)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False

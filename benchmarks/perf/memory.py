"""Memory measurements every benchmark here shares: this process's own peak and current RSS.

Not ``ru_maxrss`` where /proc is available: on Linux that survives ``execve`` and starts from the
RSS of the process that spawned us (a fresh interpreter started by a 3 GB parent reports a 3 GB
``ru_maxrss``). VmHWM belongs to this process's own address space, and can be reset.
"""

from __future__ import annotations

import contextlib
import resource
import sys


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process's own address space, in bytes (Linux)."""
    out = {}
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    return out


def peak_rss_bytes() -> int:
    """Peak RSS of this process.

    Not ``ru_maxrss`` where /proc is available: on Linux that survives ``execve`` and starts from
    the RSS of the process that spawned us (a fresh interpreter started by a 3 GB parent reports a
    3 GB ``ru_maxrss``). VmHWM belongs to this process's own address space.
    """
    status = _proc_status()
    if "VmHWM" in status:
        return status["VmHWM"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def current_rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak measured is the write's alone."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_mib(field: str = "VmRSS") -> float:
    """Current (``VmRSS``) or peak (``VmHWM``) resident memory of this process in MiB."""
    if field == "VmHWM":
        return peak_rss_bytes() / (1 << 20)
    return current_rss_bytes() / (1 << 20)

"""Process memory: the peak resident set of a case and the CPU memory cap; :func:`keep_freed_memory` (glibc's malloc
kept from unmapping freed activations) lives in the engine, which sets it for CPU training and evaluation runs."""
import re
import sys
from typing import Optional

from ...engine.malloc import keep_freed_memory  # noqa: F401 (re-exported: gpvit.tools.bench.keep_freed_memory)

try:
    import resource  # Unix only: peak RSS without /proc, and the CPU memory cap
except ImportError:  # pragma: no cover - Windows
    resource = None


def proc_status_kb(key: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            m = re.search(rf'^{key}:\s+(\d+) kB', f.read(), re.M)
        return int(m[1]) if m else None
    except OSError:
        return None


def rss_bytes() -> int:
    kb = proc_status_kb('VmRSS')
    if kb is not None:
        return kb * 1024
    return max_rss_bytes()  # no /proc: the peak is all we have


def max_rss_bytes() -> int:
    """Lifetime peak RSS of this process (``ru_maxrss``: KiB on Linux, bytes on macOS); 0 if unknown."""
    if resource is None:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == 'darwin' else peak * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return proc_status_kb('VmHWM') is not None
    except OSError:
        return False


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == 'OutOfMemoryError':
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ('out of memory' in msg.lower() or 'not enough memory' in msg
                                            or "can't allocate memory" in msg or 'std::bad_alloc' in msg)




def default_mem_cap() -> Optional[int]:
    """Three quarters of the memory available now (``MemAvailable``), in bytes; None if unknown."""
    try:
        with open('/proc/meminfo') as f:
            m = re.search(r'^MemAvailable:\s+(\d+) kB', f.read(), re.M)
        return int(m[1]) * 1024 * 3 // 4 if m else None
    except OSError:
        return None



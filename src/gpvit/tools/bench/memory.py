"""Process memory: the peak resident set of a case, the CPU memory cap, and glibc's malloc kept from unmapping freed
activations (:func:`keep_freed_memory`)."""
import re
import sys
from typing import Optional


try:
    import resource  # Unix only: peak RSS without /proc, and the CPU memory cap
except ImportError:  # pragma: no cover - Windows
    resource = None

def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc serves blocks above a (dynamic, at most 32 MiB) threshold with ``mmap`` and unmaps them on
    ``free``, and trims the heap top as soon as a few MiB are free. A forward pass allocates and frees
    activations of tens of MiB in every layer, so each one then arrives as fresh pages that the kernel must
    fault in and zero: at 800x1280 this costs GPViT-L1 about 20 % of its CPU inference time. After this call
    (``mallopt``: no ``mmap`` for allocations, trim threshold 2 GiB) freed activations are reused, as with
    jemalloc or tcmalloc, which PyTorch's CPU performance guide recommends preloading for the same reason. The
    price is a process that keeps its peak heap instead of shrinking between passes.

    Affects the whole process; a no-op returning False where the C library is not glibc. Setting
    ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647`` before Python starts does
    the same without code.
    """
    import ctypes
    import platform
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))


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



"""glibc's malloc kept from handing freed activations back to the kernel (:func:`keep_freed_memory`).

The trainer and the evaluator call it for runs on the CPU (``train.keep_freed_memory``); the benchmarks call it
too.
"""

__all__ = ['keep_freed_memory']


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

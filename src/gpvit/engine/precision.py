"""What a CPU's instruction set means for ``train.amp``: a hint at the start of a CPU training run.

bf16 autocast on a CPU pays only with bf16 instructions: measured (docs/benchmarks.md), the training step ran
1.8-2.9x faster than float32 on an Intel Xeon with AMX and 1.8-2.4x on an AMD EPYC with ``avx512_bf16`` (no
AMX), and 13x slower on a CPU without either. Which kind of CPU a run lands on is often not the user's choice
(a cloud machine's), so the trainer says what it found, without changing what the config asks for.
"""
import logging
import platform
from pathlib import Path
from typing import FrozenSet, Optional, Tuple

__all__ = ['BF16_FLAGS', 'cpu_bf16_flags', 'cpu_precision_hint']

BF16_FLAGS = ('avx512_bf16', 'amx_bf16')  # x86 /proc/cpuinfo flags of bf16 dot products / AMX tiles


def cpu_bf16_flags(cpuinfo: str = '/proc/cpuinfo') -> Optional[FrozenSet[str]]:
    """The :data:`BF16_FLAGS` this x86 CPU lists in ``cpuinfo`` (possibly none), or None where that is unknown
    (another architecture or OS, an unreadable file, no ``flags`` line)."""
    if platform.machine().lower() not in ('x86_64', 'amd64'):
        return None
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith('flags'):
            return frozenset(f for f in line.partition(':')[2].split() if f in BF16_FLAGS)
    return None


def cpu_precision_hint(amp: str, amp_on_cpu: bool, flags: Optional[FrozenSet[str]]) -> Optional[Tuple[int, str]]:
    """``(logging level, message)`` for a CPU run with ``train.amp`` / ``train.amp_on_cpu`` on a CPU with the bf16
    ``flags`` of :func:`cpu_bf16_flags`, or None when there is nothing to say (or the CPU is unknown)."""
    if flags is None:
        return None
    has = ', '.join(sorted(flags))
    if flags and amp == 'none':
        return logging.INFO, (f'this CPU has bf16 instructions ({has}): train.amp=bf16 with train.amp_on_cpu=true '
                              f'trained 1.8-2.9x faster than float32 in docs/benchmarks.md')
    if flags and amp == 'bf16' and not amp_on_cpu:
        return logging.WARNING, (f'train.amp=bf16 runs in float32 on a CPU unless train.amp_on_cpu=true; this CPU '
                                 f'has bf16 instructions ({has}), with which bf16 trained 1.8-2.9x faster')
    if not flags and amp == 'bf16' and amp_on_cpu:
        return logging.WARNING, ('this CPU lists neither avx512_bf16 nor amx_bf16: bf16 autocast trained 13x slower '
                                 'than float32 on such a CPU in docs/benchmarks.md; set train.amp_on_cpu=false to '
                                 'train in float32')
    return None

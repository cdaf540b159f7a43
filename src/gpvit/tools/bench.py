"""Benchmarks: parameters, FLOPs, latency, throughput and peak memory of models, and FLOPs of single blocks.

Two built-in suites reproduce the GPViT paper's measurements on this code:

* ``appendix``: each GPViT variant against plain ViTs of the same width and depth with global self-attention,
  at patch 16 and patch 8, at 224x224, 512x512 and 800x1280 (the paper's appendix comparison). Cases that run
  out of memory or out of the time budget are marked as such.
* ``figure5``: FLOPs of one GP block (16/32/64 groups), one global self-attention block and one local-attention
  block of the same width as the number of tokens grows (the paper's Figure 5).

How each number is measured:

* **Parameters**: ``sum(p.numel())`` of the model as built (ImageNet classifier head included).
* **FLOPs**: ``torch.utils.flop_counter`` at 2 FLOPs per multiply-accumulate, for one image, counted on fake
  tensors (:func:`~gpvit.tools.flops.count_flops_symbolic`): exact, and available even for cases that do not
  fit in memory or time.
* **Latency**: wall time of one forward pass of the batch (``torch.inference_mode``, eval mode), median over
  the timed iterations that follow ``warmup`` untimed ones; CUDA is synchronised around each iteration.
  **Throughput** = batch size / median latency.
* **Peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` over the warm-up and timed iterations (weights,
  input and activations; the caching allocator's reserve is not counted). On CPU, allocations of torch are
  invisible to ``tracemalloc``; the process's resident set is measured instead: the kernel's peak-RSS mark
  (``VmHWM``) is reset through ``/proc/self/clear_refs`` after the model is built, and the peak over the runs
  minus the RSS before the model was built is reported (weights, input, activations and allocator overhead).
  Where the mark cannot be reset, the process's lifetime peak (``ru_maxrss``) is used instead, an upper bound;
  the ``mem_method`` column says which.

Each case runs in a fresh Python process (``python -m gpvit.tools.bench --worker``), so that a case that runs
out of memory cannot take the benchmark down, peak memory is the case's own, and a case over its time budget
can be stopped: the budget covers warm-up plus timed iterations (not the start of the process and the model
build), and a case that has not finished one warm-up and one timed iteration within it is marked ``timeout``.
On CPU the worker's address space may grow by at most ``mem_cap`` bytes (``RLIMIT_AS``) once the model is
built; an allocation beyond it fails inside torch and the case is marked ``OOM``. Address space bounds the
resident set from above, so the cap is conservative. On CUDA the cap is a per-process memory fraction, and
CUDA's own out-of-memory error marks ``OOM``.
"""
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from queue import Empty, Queue
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .flops import count_flops_symbolic

try:
    import resource  # Unix only: peak RSS without /proc, and the CPU memory cap
except ImportError:  # pragma: no cover - Windows
    resource = None
from .zoo import format_csv, format_markdown

__all__ = ['BenchCase', 'BenchResult', 'build_model', 'plain_vit', 'parse_size', 'appendix_models', 'appendix_cases',
           'grid_cases', 'default_mem_cap', 'keep_freed_memory', 'run_benchmark', 'measure', 'block_flops', 'results_markdown',
           'results_csv', 'plot_results', 'blocks_markdown', 'blocks_csv', 'plot_blocks', 'APPENDIX_SIZES',
           'FIGURE5_SIDES', 'DTYPES', 'PLAIN_VIT_HEADS']

APPENDIX_SIZES: Tuple[Tuple[int, int], ...] = ((224, 224), (512, 512), (800, 1280))
#: Token-grid sides of the Figure 5 sweep: 28x28 (224x224 at stride 8) to 256x256 tokens.
FIGURE5_SIDES: Tuple[int, ...] = (28, 32, 48, 64, 96, 128, 160, 192, 224, 256)
DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
#: Heads of the plain-ViT baselines: GPViT's widths (216, 348, 432, 624) have no common head size of 64, so the
#: baselines use 6 heads, GPViT's own number of global (grouping/ungrouping) heads. FLOPs do not depend on it.
PLAIN_VIT_HEADS = 6
_PLAIN_VIT = re.compile(r'^vit_plain_p(\d+)_c(\d+)(?:_d(\d+))?(?:_h(\d+))?$')


@dataclass
class BenchCase:
    """One benchmark case.

    Attributes:
        model: a registered model of this project, any timm model name, or a plain ViT baseline
            ``vit_plain_p{patch}_c{width}[_d{depth}][_h{heads}]`` (depth 12, 6 heads by default).
        input_size: ``(H, W)``.
        batch_size: images per forward pass.
        dtype: ``'float32'``, ``'bfloat16'`` or ``'float16'``: weights and input are cast to it.
        device: ``'cpu'`` or ``'cuda'`` (``'cuda:N'``).
    """
    model: str
    input_size: Tuple[int, int]
    batch_size: int = 1
    dtype: str = 'float32'
    device: str = 'cpu'


@dataclass
class BenchResult:
    """Measurements of one case; see the module docstring for the methods.

    ``status`` is ``'ok'``, ``'OOM'``, ``'timeout'`` or ``'error'``; ``note`` says why for the others.
    ``flops`` is per image (batch 1); ``latency_ms`` per batch (median); ``throughput`` in images/s;
    ``peak_mem_mb`` in MiB.
    """
    model: str
    input_size: str
    batch_size: int
    dtype: str
    device: str
    params: Optional[int] = None
    flops: Optional[int] = None
    latency_ms: Optional[float] = None
    throughput: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    mem_method: str = ''
    iters: int = 0
    status: str = 'ok'
    note: str = ''


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


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------

def parse_size(text: str) -> Tuple[int, int]:
    """``'224'`` -> ``(224, 224)``; ``'800x1280'`` -> ``(800, 1280)`` (height x width)."""
    m = re.fullmatch(r'\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?', str(text))
    if not m or int(m[1]) <= 0 or (m[2] is not None and int(m[2]) <= 0):
        raise ValueError(f'input size must be N or HxW with positive integers, got {text!r}')
    return int(m[1]), int(m[2] or m[1])


def plain_vit(patch_size: int, width: int, depth: int = 12, num_heads: int = PLAIN_VIT_HEADS,
              img_size: int = 224, num_classes: int = 1000) -> nn.Module:
    """A plain ViT baseline: timm ``VisionTransformer`` with global self-attention in every block.

    No class token, average pooling, MLP ratio 4, qkv bias, built at ``img_size`` with ``dynamic_img_size`` so
    it runs at any multiple of the patch size (its position embedding is resized on the fly, as GPViT's is).
    """
    from timm.models.vision_transformer import VisionTransformer
    if width % num_heads:
        raise ValueError(f'plain ViT width {width} is not divisible by {num_heads} heads')
    return VisionTransformer(
        img_size=img_size, patch_size=patch_size, embed_dim=width, depth=depth, num_heads=num_heads, mlp_ratio=4.,
        qkv_bias=True, class_token=False, global_pool='avg', dynamic_img_size=True, num_classes=num_classes)


def build_model(name: str) -> nn.Module:
    """Build a benchmark model by name (random weights, CPU, eval mode); see :class:`BenchCase`."""
    import timm

    from ..factory import create_model, list_models
    m = _PLAIN_VIT.match(name)
    if m:
        patch, width = int(m[1]), int(m[2])
        depth = int(m[3]) if m[3] else 12
        heads = int(m[4]) if m[4] else PLAIN_VIT_HEADS
        return plain_vit(patch, width, depth, heads).eval()
    if name in list_models():
        return create_model(name).eval()
    if timm.is_model(name):
        return timm.create_model(name, pretrained=False).eval()
    raise ValueError(f'unknown model {name!r}: not a registered model ({", ".join(list_models())}), not a timm '
                     f'model, and not a plain ViT baseline vit_plain_p<patch>_c<width>[_d<depth>][_h<heads>]')


def appendix_models(variant: str) -> List[str]:
    """``[variant, plain ViT /16, plain ViT /8]`` with the variant's width and depth."""
    model = build_model(variant)
    width, depth = getattr(model, 'embed_dim', None), len(getattr(model, 'blocks', ()))
    if width is None or not depth:
        raise ValueError(f'{variant} is not a plain (single-width) transformer; the appendix comparison is for '
                         f'GPViT models')
    suffix = f'_c{width}' + ('' if depth == 12 else f'_d{depth}')
    return [variant, f'vit_plain_p16{suffix}', f'vit_plain_p8{suffix}']


def appendix_cases(
        variants: Sequence[str] = ('gpvit_l1', 'gpvit_l2', 'gpvit_l3', 'gpvit_l4'),
        sizes: Sequence[Tuple[int, int]] = APPENDIX_SIZES,
        batch_sizes: Sequence[int] = (1,),
        dtypes: Sequence[str] = ('float32',),
        devices: Sequence[str] = ('cpu',),
) -> List[BenchCase]:
    """The appendix comparison: each variant and its two plain-ViT baselines at each size."""
    models = [m for v in variants for m in appendix_models(v)]
    return grid_cases(models, sizes, batch_sizes, dtypes, devices)


def grid_cases(models: Sequence[str], sizes: Sequence[Tuple[int, int]], batch_sizes: Sequence[int] = (1,),
               dtypes: Sequence[str] = ('float32',), devices: Sequence[str] = ('cpu',)) -> List[BenchCase]:
    """Every combination, models outermost."""
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f'unsupported dtype {d!r}; choose from {", ".join(DTYPES)}')
    for dev in devices:
        if dev.startswith('cuda') and not torch.cuda.is_available():
            raise ValueError(f'device {dev!r} requested, but CUDA is not available here')
        if not (dev == 'cpu' or re.fullmatch(r'cuda(:\d+)?', dev)):
            raise ValueError(f"unsupported device {dev!r}; use 'cpu' or 'cuda[:N]'")
    for b in batch_sizes:
        if b < 1:
            raise ValueError(f'batch size must be >= 1, got {b}')
    return [BenchCase(m, tuple(s), b, d, dev)
            for m in models for s in sizes for b in batch_sizes for d in dtypes for dev in devices]


# ---------------------------------------------------------------------------------------------------------------
# Measurement (runs inside the worker process)
# ---------------------------------------------------------------------------------------------------------------

def _proc_status_kb(key: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            m = re.search(rf'^{key}:\s+(\d+) kB', f.read(), re.M)
        return int(m[1]) if m else None
    except OSError:
        return None


def _rss_bytes() -> int:
    kb = _proc_status_kb('VmRSS')
    if kb is not None:
        return kb * 1024
    return _max_rss_bytes()  # no /proc: the peak is all we have


def _max_rss_bytes() -> int:
    """Lifetime peak RSS of this process (``ru_maxrss``: KiB on Linux, bytes on macOS); 0 if unknown."""
    if resource is None:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == 'darwin' else peak * 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return _proc_status_kb('VmHWM') is not None
    except OSError:
        return False


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == 'OutOfMemoryError':
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ('out of memory' in msg.lower() or 'not enough memory' in msg
                                            or "can't allocate memory" in msg or 'std::bad_alloc' in msg)


def measure(
        model: nn.Module,
        case: BenchCase,
        warmup: int = 1,
        min_time: float = 2.,
        max_iters: int = 20,
        rss_before_model: Optional[int] = None,
) -> BenchResult:
    """Time ``model`` on a random batch of ``case`` in this process and measure its peak memory.

    ``model`` must already be on the case's device and dtype. Runs ``warmup`` untimed iterations, then timed
    ones until ``min_time`` seconds have passed or ``max_iters`` were run (at least one). Out-of-memory errors
    give status ``'OOM'``; other exceptions propagate.
    """
    res = BenchResult(case.model, _size_str(case.input_size), case.batch_size, case.dtype, case.device)
    device = torch.device(case.device)
    cuda = device.type == 'cuda'
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    times: List[float] = []
    try:
        x = torch.randn(case.batch_size, 3, *case.input_size, device=device, dtype=DTYPES[case.dtype])
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            res.mem_method = 'cuda max_memory_allocated'
        else:
            base = rss_before_model if rss_before_model is not None else _rss_bytes()
            res.mem_method = ('peak RSS - RSS before model' if _reset_peak_rss()
                              else 'ru_maxrss - RSS before model (upper bound)')
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
                sync()
            start = time.perf_counter()
            while not times or (len(times) < max_iters and time.perf_counter() - start < min_time):
                t0 = time.perf_counter()
                model(x)
                sync()
                times.append(time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - only out-of-memory is a result; the rest propagates
        if not _is_oom(e):
            raise
        res.status, res.note = 'OOM', _first_line(e)
        return res
    if cuda:
        res.peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        hwm = _proc_status_kb('VmHWM') if res.mem_method.startswith('peak RSS') else None
        peak = hwm * 1024 if hwm is not None else _max_rss_bytes()
        res.peak_mem_mb = max(peak - base, 0) / 2 ** 20
    times.sort()
    med = times[len(times) // 2] if len(times) % 2 else 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2])
    res.latency_ms = med * 1e3
    res.throughput = case.batch_size / med
    res.iters = len(times)
    return res


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    text = text[0] if text else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _runtime_warmup() -> None:
    """Run a few tiny ops so that one-time runtime set-up (thread pools, kernel caches) is not counted as the
    memory of the case."""
    import torch.nn.functional as F
    x = torch.randn(1, 8, 16, 16)
    F.conv2d(x, torch.randn(8, 8, 3, 3), padding=1)
    q = torch.randn(1, 2, 16, 8)
    F.scaled_dot_product_attention(q, q, q)
    F.layer_norm(x, (16,)) @ torch.randn(16, 16)


def _worker_main() -> int:
    """Worker process: read a JSON job on stdin, report JSON lines on stdout (``ready``, then ``result``)."""
    job = json.loads(sys.stdin.readline())
    out = sys.stdout

    def send(event: str, **kw) -> None:
        out.write(json.dumps(dict(event=event, **kw)) + '\n')
        out.flush()

    case = BenchCase(**{**job['case'], 'input_size': tuple(job['case']['input_size'])})
    if job.get('threads'):
        torch.set_num_threads(job['threads'])
    try:
        _runtime_warmup()
        rss0 = _rss_bytes()
        model = build_model(case.model).to(device=case.device, dtype=DTYPES[case.dtype])
        for p in model.parameters():
            p.requires_grad_(False)
        cap = job.get('mem_cap')
        if cap:
            if case.device == 'cpu':
                vm_kb = _proc_status_kb('VmSize')
                if resource is None or vm_kb is None:
                    raise RuntimeError('a CPU memory cap needs Linux (/proc and RLIMIT_AS); run with --mem-cap-gb 0')
                soft, hard = resource.getrlimit(resource.RLIMIT_AS)
                limit = vm_kb * 1024 + int(cap)
                if hard != resource.RLIM_INFINITY:
                    limit = min(limit, hard)
                resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
            else:
                dev = torch.device(case.device)
                total = torch.cuda.get_device_properties(dev).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1., cap / total), dev)
        send('ready')
        res = measure(model, case, job['warmup'], job['min_time'], job['max_iters'], rss_before_model=rss0)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which marks the case
        res = BenchResult(case.model, _size_str(case.input_size), case.batch_size, case.dtype, case.device,
                          status='OOM' if _is_oom(e) else 'error', note=_first_line(e))
    send('result', result=asdict(res))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Driver (parent process)
# ---------------------------------------------------------------------------------------------------------------

def _size_str(size: Tuple[int, int]) -> str:
    return f'{size[0]}x{size[1]}'


def default_mem_cap() -> Optional[int]:
    """Three quarters of the memory available now (``MemAvailable``), in bytes; None if unknown."""
    try:
        with open('/proc/meminfo') as f:
            m = re.search(r'^MemAvailable:\s+(\d+) kB', f.read(), re.M)
        return int(m[1]) * 1024 * 3 // 4 if m else None
    except OSError:
        return None


def _static_costs(name: str, input_size: Tuple[int, int], cache: Dict) -> Tuple[Optional[int], Optional[int], str]:
    """Parameters and per-image FLOPs of a model at a size, counted on fake tensors (no compute).

    ``cache`` keeps the results and the last model built (cases come model by model, so one model at a time
    is held).
    """
    key = (name, tuple(input_size))
    if key not in cache:
        if cache.get('model_name') != name:
            cache['model'] = None  # release the previous model before building the next
            cache['model'] = build_model(name)
            cache['model_name'] = name
        model = cache['model']
        params = sum(p.numel() for p in model.parameters())
        try:
            cache[key] = (params, count_flops_symbolic(model, (1, 3, *input_size)), '')
        except Exception as e:  # noqa: BLE001 - the model cannot take this size; the worker will say so too
            cache[key] = (params, None, _first_line(e))
    return cache[key]


def _run_worker(case: BenchCase, time_budget: float, mem_cap: Optional[int], warmup: int, min_time: float,
                max_iters: int, threads: Optional[int], setup_timeout: float) -> BenchResult:
    job = dict(case=asdict(case), mem_cap=mem_cap, warmup=warmup, min_time=min(min_time, time_budget),
               max_iters=max_iters, threads=threads)
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.Popen([sys.executable, '-m', 'gpvit.tools.bench', '--worker'], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: Queue = Queue()

    def reader() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    stderr_tail: List[str] = []

    def err_reader() -> None:
        for line in proc.stderr:
            stderr_tail.append(line)
            del stderr_tail[:-20]

    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=err_reader, daemon=True).start()
    proc.stdin.write(json.dumps(job) + '\n')
    proc.stdin.close()
    base = BenchResult(case.model, _size_str(case.input_size), case.batch_size, case.dtype, case.device)

    def wait_event(timeout: float) -> Optional[dict]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.))
            except Empty:
                return {'event': 'timeout'}
            if line is None:
                return None
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue  # stray output of a library on stdout

    try:
        msg = wait_event(setup_timeout)
        if msg is not None and msg['event'] == 'ready':
            msg = wait_event(time_budget)
            if msg is not None and msg['event'] == 'timeout':
                base.status = 'timeout'
                base.note = f'warm-up + 1 timed iteration not done in the {time_budget:g} s budget'
                return base
        elif msg is not None and msg['event'] == 'timeout':
            base.status, base.note = 'error', f'model not built within {setup_timeout:g} s'
            return base
        if msg is not None and msg['event'] == 'result':
            return BenchResult(**msg['result'])
        proc.wait(timeout=30)
        code = proc.returncode
        if code == -9:
            base.status, base.note = 'OOM', 'worker killed by the system (SIGKILL), most likely out of memory'
        else:
            tail = ''.join(stderr_tail).strip().splitlines()
            base.status, base.note = 'error', f'worker exited with code {code}' + (f': {tail[-1]}' if tail else '')
        return base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def run_benchmark(
        cases: Sequence[BenchCase],
        time_budget: float = 60.,
        mem_cap: Optional[int] = -1,
        warmup: int = 1,
        min_time: float = 2.,
        max_iters: int = 20,
        threads: Optional[int] = None,
        setup_timeout: float = 600.,
        progress: Optional[Callable[[BenchCase, BenchResult], None]] = None,
) -> List[BenchResult]:
    """Run each case in a fresh worker process; see the module docstring.

    Args:
        cases: what to run.
        time_budget: seconds for warm-up + timed iterations of one case; beyond it the case is ``timeout``.
        mem_cap: bytes the worker may allocate once its model is built (``-1``: :func:`default_mem_cap` for CPU
            cases and no cap for CUDA cases; None: no cap).
        warmup: untimed iterations.
        min_time: the timed iterations stop after this many seconds (or ``max_iters``), at least one runs.
        max_iters: most timed iterations.
        threads: ``torch.set_num_threads`` in the workers (default: torch's).
        setup_timeout: seconds allowed for a worker to start and build its model.
        progress: called with each case and its result.
    """
    host_cap = default_mem_cap() if mem_cap == -1 else mem_cap
    cache: Dict = {}
    results = []
    for case in cases:
        params, flops, err = _static_costs(case.model, case.input_size, cache)
        # the default cap is a share of host memory: it applies to CPU cases; CUDA cases are capped only on request
        cap = host_cap if case.device == 'cpu' or mem_cap != -1 else None
        res = _run_worker(case, time_budget, cap, warmup, min_time, max_iters, threads, setup_timeout)
        res.params, res.flops = params, flops
        if res.status == 'error' and err and not res.note:
            res.note = err
        results.append(res)
        if progress is not None:
            progress(case, res)
    return results


# ---------------------------------------------------------------------------------------------------------------
# Figure 5: FLOPs of single blocks
# ---------------------------------------------------------------------------------------------------------------

def block_flops(
        width: int = 216,
        sides: Sequence[int] = FIGURE5_SIDES,
        groups: Sequence[int] = (16, 32, 64),
        heads: int = 6,
        local_heads: int = 12,
        stripe_width: int = 2,
) -> List[Dict]:
    """FLOPs of single blocks of width ``width`` on ``side x side`` token maps, batch 1.

    Blocks: GPViT's :class:`~gpvit.models.gpvit.GPBlock` with each number of groups (``heads`` grouping and
    ungrouping heads); a global self-attention block (timm ``vision_transformer.Block``, ``heads`` heads, MLP
    ratio 4, qkv bias); and GPViT's local block :class:`~gpvit.models.gpvit.LePEBlock` (stripe attention of
    width ``stripe_width`` with ``local_heads`` heads). Every block includes its MLP; counted on fake tensors.

    Returns:
        One dict per side: ``side``, ``tokens`` and one FLOP count per block, keyed by the block's label.
    """
    from timm.models.vision_transformer import Block

    from ..models.gpvit import GPBlock, LePEBlock
    blocks = {f'GP block ({n} groups)': (GPBlock(width, n, num_heads=heads), 'map') for n in groups}
    blocks['global attention'] = (Block(width, heads, mlp_ratio=4., qkv_bias=True), 'tokens')
    blocks[f'local attention (LePE, stripe {stripe_width})'] = (
        LePEBlock(width, local_heads, stripe_width), 'map')
    rows = []
    for s in sides:
        row = {'side': s, 'tokens': s * s}
        for label, (blk, layout) in blocks.items():
            shape = (1, s, s, width) if layout == 'map' else (1, s * s, width)
            row[label] = count_flops_symbolic(blk, shape)
        rows.append(row)
    return rows


def blocks_markdown(rows: List[Dict]) -> str:
    labels = [k for k in rows[0] if k not in ('side', 'tokens')]
    body = [[f'{r["side"]}x{r["side"]}', f'{r["tokens"]:,}'] + [f'{r[k] / 1e9:.3f}' for k in labels] for r in rows]
    return format_markdown(['token grid', 'tokens'] + [f'{k} GFLOPs' for k in labels], body,
                           'l' + 'r' * (len(labels) + 1))


def blocks_csv(rows: List[Dict]) -> str:
    keys = list(rows[0])
    return format_csv(keys, [[r[k] for k in keys] for r in rows])


def plot_blocks(rows: List[Dict], path: os.PathLike, width: Optional[int] = None) -> Path:
    """Figure 5: block FLOPs against the number of tokens, log-log."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    labels = [k for k in rows[0] if k not in ('side', 'tokens')]
    tokens = [r['tokens'] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    for k in labels:
        style = '-' if k.startswith('GP') else ('--' if k.startswith('global') else ':')
        ax.plot(tokens, [r[k] / 1e9 for r in rows], style, marker='o', ms=3, label=k)
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('number of tokens')
    ax.set_ylabel('GFLOPs (2 per MAC)')
    ax.set_title('FLOPs of one block' + (f', width {width}' if width else ''))
    ax.grid(True, which='both', alpha=.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------

def _failed(r: BenchResult) -> str:
    return 'OOM' if r.status == 'OOM' else ('timeout' if r.status == 'timeout' else 'error')


def results_markdown(results: Sequence[BenchResult]) -> str:
    """Markdown table; the measured columns of a failed case name the failure, and notes follow the table."""
    header = ['model', 'input', 'batch', 'dtype', 'device', 'params', 'GFLOPs/img', 'latency (ms)',
              'throughput (img/s)', 'peak mem (MiB)', 'status']
    rows, notes = [], []
    for r in results:
        ok = r.status == 'ok'
        f = _failed(r)
        rows.append([
            f'`{r.model}`', r.input_size, r.batch_size, r.dtype, r.device,
            '–' if r.params is None else f'{r.params / 1e6:.2f}M',
            '–' if r.flops is None else f'{r.flops / 1e9:.2f}',
            f'{r.latency_ms:.1f}' if ok else f,
            f'{r.throughput:.2f}' if ok else f,
            f'{r.peak_mem_mb:.0f}' if ok and r.peak_mem_mb is not None else ('–' if ok else f),
            r.status,
        ])
        if not ok and r.note:
            notes.append(f'- `{r.model}` {r.input_size} batch {r.batch_size} {r.dtype} {r.device}: '
                         f'{r.status}: {r.note}')
    text = format_markdown(header, rows, 'lllllrrrrrl')
    if notes:
        text += '\n' + '\n'.join(notes) + '\n'
    return text


def results_csv(results: Sequence[BenchResult]) -> str:
    keys = [f.name for f in fields(BenchResult)]
    return format_csv(keys, [['' if getattr(r, k) is None else getattr(r, k) for k in keys] for r in results])


def _series_label(r: BenchResult, vary: Sequence[str]) -> str:
    extra = [str(getattr(r, k)) if k != 'batch_size' else f'b{r.batch_size}' for k in vary]
    return ' '.join([r.model] + extra)


def plot_results(results: Sequence[BenchResult], path: os.PathLike, title: str = '', group_size: int = 1) -> Path:
    """One panel per metric (GFLOPs per image, latency, peak memory), input sizes on the x axis, one line per
    model (and batch/dtype/device where those vary). Failed cases are marked at the top of a panel.

    Consecutive groups of ``group_size`` lines share a colour (the appendix: a GPViT variant and its two
    baselines); plain-ViT baselines are dashed (patch 16) or dotted (patch 8).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    sizes = list(dict.fromkeys(r.input_size for r in results))
    vary = [k for k in ('batch_size', 'dtype', 'device') if len({getattr(r, k) for r in results}) > 1]
    series: Dict[str, List[BenchResult]] = {}
    for r in results:
        series.setdefault(_series_label(r, vary), []).append(r)
    metrics = [('flops', 'GFLOPs per image', 1e-9), ('latency_ms', 'latency per batch (ms)', 1.),
               ('peak_mem_mb', 'peak memory (MiB)', 1.)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5), dpi=100)
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for ax, (key, ylabel, scale) in zip(axes, metrics):
        failed = []
        for i, (label, rs) in enumerate(series.items()):
            color = colors[(i // group_size) % len(colors)]
            style = ':' if '_p8_' in label else ('--' if '_p16_' in label else '-')
            xs, ys = [], []
            for r in rs:
                v = getattr(r, key)
                if v is not None and (key == 'flops' or r.status == 'ok'):
                    xs.append(sizes.index(r.input_size))
                    ys.append(v * scale)
                elif key != 'flops':
                    failed.append((sizes.index(r.input_size), _failed(r), color))
            ax.plot(xs, ys, style, marker='o', ms=4, color=color, label=label)
        ax.set_yscale('log')
        ax.set_xticks(range(len(sizes)), sizes)
        ax.set_xlim(-0.3, len(sizes) - 0.7)
        ax.set_xlabel('input size')
        ax.set_ylabel(ylabel)
        ax.grid(True, which='both', alpha=.3)
        for j, (x, what, color) in enumerate(failed):
            ax.annotate(what, (x, 1.0), xycoords=('data', 'axes fraction'), xytext=(0, -12 - 10 * (j % 4)),
                        textcoords='offset points', ha='center', fontsize=7, color=color)
    axes[0].legend(fontsize=7, loc='upper left')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == '__main__':
    if sys.argv[1:] == ['--worker']:
        sys.exit(_worker_main())
    sys.exit('usage: python -m gpvit.tools.bench --worker  (internal; use the `gpvit bench` command)')

"""The worker process of a benchmark case: builds the model, times it, reports on stdout as JSON lines.

Run by the driver as ``python -m gpvit.tools.bench.worker``; a case that runs out of memory or time takes
down only its own process."""
import contextlib
import json
import sys
import time
from dataclasses import asdict
from typing import Callable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cases import DTYPES, BenchCase, BenchResult, build_model, first_line
from .memory import is_oom, max_rss_bytes, proc_status_kb, reset_peak_rss, resource, rss_bytes

def measure(
        model: nn.Module,
        case: BenchCase,
        warmup: int = 1,
        min_time: float = 2.,
        max_iters: int = 20,
        rss_before_model: Optional[int] = None,
) -> BenchResult:
    """Time ``model`` on a random batch of ``case`` in this process and measure its peak memory.

    ``model`` must already be on the case's device, and in the case's dtype for inference (float32 for
    training, which autocasts). Runs ``warmup`` untimed iterations (forward passes or training steps), then
    timed ones until ``min_time`` seconds have passed or ``max_iters`` were run (at least one). Out-of-memory
    errors give status ``'OOM'``; other exceptions propagate.
    """
    res = BenchResult.for_case(case)
    device = torch.device(case.device)
    cuda = device.type == 'cuda'
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    times: List[float] = []
    try:
        if case.mode == 'train':
            run, grad = train_step(model, case), contextlib.nullcontext
        else:
            x = torch.randn(case.batch_size, 3, *case.input_size, device=device, dtype=DTYPES[case.dtype])
            run, grad = (lambda: model(x)), torch.inference_mode
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            res.mem_method = 'cuda max_memory_allocated'
        else:
            base = rss_before_model if rss_before_model is not None else rss_bytes()
            res.mem_method = ('peak RSS - RSS before model' if reset_peak_rss()
                              else 'ru_maxrss - RSS before model (upper bound)')
        with grad():
            for _ in range(warmup):
                run()
                sync()
            start = time.perf_counter()
            while not times or (len(times) < max_iters and time.perf_counter() - start < min_time):
                t0 = time.perf_counter()
                run()
                sync()
                times.append(time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - only out-of-memory is a result; the rest propagates
        if not is_oom(e):
            raise
        res.status, res.note = 'OOM', first_line(e)
        return res
    if cuda:
        res.peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        hwm = proc_status_kb('VmHWM') if res.mem_method.startswith('peak RSS') else None
        peak = hwm * 1024 if hwm is not None else max_rss_bytes()
        res.peak_mem_mb = max(peak - base, 0) / 2 ** 20
    times.sort()
    med = times[len(times) // 2] if len(times) % 2 else 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2])
    res.latency_ms = med * 1e3
    res.throughput = case.batch_size / med
    res.iters = len(times)
    return res


def train_step(model: nn.Module, case: BenchCase) -> Callable[[], None]:
    """One training step of ``model`` (float32 weights, train mode) on a random batch and random labels, as
    the engine runs it: autocast to the case's dtype unless float32 (float16 with a GradScaler),
    cross-entropy, backward, fused AdamW."""
    device = torch.device(case.device)
    num_classes = getattr(model, 'num_classes', 0)
    if not num_classes:
        raise ValueError(f'{case.model}: a training step needs a classifier head (num_classes > 0)')
    x = torch.randn(case.batch_size, 3, *case.input_size, device=device)
    y = torch.randint(0, num_classes, (case.batch_size,), device=device)
    dtype = DTYPES[case.dtype]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return step


def _runtime_warmup() -> None:
    """Run a few tiny ops so that one-time runtime set-up (thread pools, kernel caches) is not counted as the
    memory of the case."""
    x = torch.randn(1, 8, 16, 16)
    F.conv2d(x, torch.randn(8, 8, 3, 3), padding=1)
    q = torch.randn(1, 2, 16, 8)
    F.scaled_dot_product_attention(q, q, q)
    F.layer_norm(x, (16,)) @ torch.randn(16, 16)


def main() -> int:
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
        rss0 = rss_bytes()
        if case.mode == 'train':
            model = build_model(case.model).to(device=case.device).train()
        else:
            model = build_model(case.model).to(device=case.device, dtype=DTYPES[case.dtype])
            for p in model.parameters():
                p.requires_grad_(False)
        cap = job.get('mem_cap')
        if cap:
            if case.device == 'cpu':
                vm_kb = proc_status_kb('VmSize')
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
        res = BenchResult.for_case(case, status='OOM' if is_oom(e) else 'error', note=first_line(e))
    send('result', result=asdict(res))
    return 0


if __name__ == '__main__':
    sys.exit(main())

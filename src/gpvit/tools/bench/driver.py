"""The driver (parent process): static costs of each case, one worker process per case under a time budget and
a memory cap, results in order."""
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from queue import Empty, Queue
from typing import Callable, Dict, List, Optional, Sequence, Tuple


from ..flops import count_flops_symbolic
from .cases import BenchCase, BenchResult, build_model, first_line
from .memory import default_mem_cap

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
            cache[key] = (params, None, first_line(e))
    return cache[key]


def _run_worker(case: BenchCase, time_budget: float, mem_cap: Optional[int], warmup: int, min_time: float,
                max_iters: int, threads: Optional[int], setup_timeout: float) -> BenchResult:
    job = dict(case=asdict(case), mem_cap=mem_cap, warmup=warmup, min_time=min(min_time, time_budget),
               max_iters=max_iters, threads=threads)
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.Popen([sys.executable, '-m', 'gpvit.tools.bench.worker'], stdin=subprocess.PIPE,
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
    base = BenchResult.for_case(case)

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

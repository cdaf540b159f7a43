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
  **Throughput** = batch size / median latency. With ``mode='train'`` (``--modes train``) the timed iteration
  is a training step instead (train mode, float32 weights, autocast to the case's dtype with a GradScaler for
  float16, cross-entropy on random labels, backward, fused AdamW: the engine's defaults), about 3x the FLOPs.
* **Peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` over the warm-up and timed iterations (weights,
  input and activations; the caching allocator's reserve is not counted). On CPU, allocations of torch are
  invisible to ``tracemalloc``; the process's resident set is measured instead: the kernel's peak-RSS mark
  (``VmHWM``) is reset through ``/proc/self/clear_refs`` after the model is built, and the peak over the runs
  minus the RSS before the model was built is reported (weights, input, activations and allocator overhead).
  Where the mark cannot be reset, the process's lifetime peak (``ru_maxrss``) is used instead, an upper bound;
  the ``mem_method`` column says which.

Each case runs in a fresh Python process (``python -m gpvit.tools.bench.worker``), so that a case that runs
out of memory cannot take the benchmark down, peak memory is the case's own, and a case over its time budget
can be stopped: the budget covers warm-up plus timed iterations (not the start of the process and the model
build), and a case that has not finished one warm-up and one timed iteration within it is marked ``timeout``.
On CPU the worker's address space may grow by at most ``mem_cap`` bytes (``RLIMIT_AS``) once the model is
built; an allocation beyond it fails inside torch and the case is marked ``OOM``. Address space bounds the
resident set from above, so the cap is conservative. On CUDA the cap is a per-process memory fraction, and
CUDA's own out-of-memory error marks ``OOM``.

The parts: :mod:`.cases` (what is measured, the suites, the models by name), :mod:`.memory` (peak RSS, the
memory cap, :func:`keep_freed_memory`), :mod:`.worker` (one case in its own process), :mod:`.driver` (runs the
cases), :mod:`.blocks` (Figure 5), :mod:`.report` (Markdown, CSV, plots).
"""
from .blocks import block_flops, blocks_csv, blocks_markdown, plot_blocks
from .cases import (APPENDIX_SIZES, DTYPES, FIGURE5_SIDES, PLAIN_VIT_HEADS, BenchCase, BenchResult, appendix_cases,
                    appendix_models, build_model, grid_cases, parse_size, plain_vit)
from .driver import run_benchmark
from .memory import default_mem_cap, keep_freed_memory
from .report import plot_results, results_csv, results_markdown
from .worker import measure

__all__ = ['BenchCase', 'BenchResult', 'build_model', 'plain_vit', 'parse_size', 'appendix_models', 'appendix_cases',
           'grid_cases', 'default_mem_cap', 'keep_freed_memory', 'run_benchmark', 'measure', 'block_flops',
           'results_markdown', 'results_csv', 'plot_results', 'blocks_markdown', 'blocks_csv', 'plot_blocks',
           'APPENDIX_SIZES', 'FIGURE5_SIDES', 'DTYPES', 'PLAIN_VIT_HEADS']

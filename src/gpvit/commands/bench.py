"""``gpvit bench``: parameters, FLOPs, latency, throughput and peak memory; the GPViT paper's comparisons."""
import argparse
import sys
from pathlib import Path


def _write(out_dir: Path, stem: str, markdown: str, csv_text: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f'{stem}.md').write_text(markdown)
    (out_dir / f'{stem}.csv').write_text(csv_text)


def run(args: argparse.Namespace) -> int:
    from ..tools import bench

    out_dir = Path(args.out)
    suite = args.suite or ('custom' if args.models else 'appendix')
    if suite == 'figure5':
        rows = bench.block_flops(width=args.width, sides=args.tokens or bench.FIGURE5_SIDES)
        md = bench.blocks_markdown(rows)
        _write(out_dir, 'figure5', md, bench.blocks_csv(rows))
        print(md, end='')
        if not args.no_plot:
            print(f'wrote {bench.plot_blocks(rows, out_dir / "figure5.png", args.width)}', file=sys.stderr)
        return 0

    sizes = [bench.parse_size(s) for s in args.sizes] if args.sizes else list(bench.APPENDIX_SIZES)
    devices = args.devices or ['cuda' if __import__('torch').cuda.is_available() else 'cpu']
    if suite == 'appendix':
        cases = bench.appendix_cases(args.models or ('gpvit_l1', 'gpvit_l2', 'gpvit_l3', 'gpvit_l4'), sizes,
                                     args.batch_sizes, args.dtypes, devices, args.modes)
    else:
        if not args.models:
            raise ValueError('--suite custom needs --models')
        for name in args.models:
            bench.build_model(name)  # unknown names fail here, before anything runs
        cases = bench.grid_cases(args.models, sizes, args.batch_sizes, args.dtypes, devices, args.modes)
    mem_cap = None if args.mem_cap_gb == 0 else (-1 if args.mem_cap_gb is None else int(args.mem_cap_gb * 2 ** 30))

    def progress(case, res) -> None:
        what = (f'{res.latency_ms:.1f} ms, {res.peak_mem_mb:.0f} MiB' if res.status == 'ok'
                else f'{res.status}: {res.note}')
        print(f'[{case.model} {res.input_size} b{case.batch_size} {case.dtype} {case.device} {case.mode}] {what}',
              file=sys.stderr, flush=True)

    results = bench.run_benchmark(cases, time_budget=args.time_budget, mem_cap=mem_cap, warmup=args.warmup,
                                  min_time=args.min_time, max_iters=args.max_iters, threads=args.threads,
                                  progress=progress)
    md = bench.results_markdown(results)
    _write(out_dir, suite, md, bench.results_csv(results))
    print(md, end='')
    if not args.no_plot:
        title = ('GPViT vs plain ViT (global attention, patch 16 / 8)' if suite == 'appendix' else '')
        path = bench.plot_results(results, out_dir / f'{suite}.png', title, group_size=3 if suite == 'appendix' else 1)
        print(f'wrote {path}', file=sys.stderr)
    failed = [r for r in results if r.status == 'error']
    if failed:  # OOM and timeout are measurements; an error is a case that could not run at all
        print(f'gpvit bench: error: {len(failed)} of {len(results)} case(s) could not run, first: {failed[0].model} '
              f'{failed[0].input_size}: {failed[0].note}', file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'bench', help='benchmark models: parameters, FLOPs, latency, throughput, peak memory',
        description='Without --models: the GPViT paper appendix comparison (each GPViT variant against plain ViTs '
                    'of the same width and depth with global attention at patch 16 and 8, at 224x224, 512x512 and '
                    '800x1280). --suite figure5: FLOPs of one GP block (16/32/64 groups), one global and one local '
                    'attention block against the number of tokens (paper Figure 5). With --models: any models. '
                    'Writes SUITE.md, SUITE.csv and SUITE.png to --out. Each case runs in its own process; cases '
                    'over the time budget are marked timeout, out-of-memory cases OOM.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--suite', choices=('appendix', 'figure5', 'custom'),
                   help='default: appendix, or custom when --models is given')
    p.add_argument('--models', nargs='+', help='models (custom), or the GPViT variants to compare (appendix); '
                                               'registered names, timm names, or vit_plain_p<patch>_c<width>')
    p.add_argument('--sizes', nargs='+', help='input sizes, N or HxW (default: 224 512 800x1280)')
    p.add_argument('--batch-sizes', nargs='+', type=int, default=[1])
    p.add_argument('--dtypes', nargs='+', default=['float32'], choices=('float32', 'bfloat16', 'float16'))
    p.add_argument('--devices', nargs='+', help='cpu, cuda (default: cuda if available, else cpu)')
    p.add_argument('--modes', nargs='+', default=['infer'], choices=('infer', 'train'),
                   help='infer: a forward pass in eval mode (weights and input in the dtype); train: a training '
                        'step (float32 weights, autocast to the dtype, cross-entropy, backward, fused AdamW)')
    p.add_argument('--time-budget', type=float, default=60.,
                   help='seconds per case for warm-up + timed iterations; beyond: timeout')
    p.add_argument('--mem-cap-gb', type=float,
                   help='memory a case may allocate (GiB); default: 3/4 of the available host memory for CPU cases, '
                        'no cap on CUDA; 0: no cap')
    p.add_argument('--warmup', type=int, default=1, help='untimed iterations')
    p.add_argument('--min-time', type=float, default=2., help='seconds of timed iterations (at least one)')
    p.add_argument('--max-iters', type=int, default=20, help='most timed iterations')
    p.add_argument('--threads', type=int, help='torch threads per case (default: torch\'s)')
    p.add_argument('--width', type=int, default=216, help='block width for figure5 (GPViT-L1: 216)')
    p.add_argument('--tokens', nargs='+', type=int, help='token-grid sides for figure5 (default 28 .. 256)')
    p.add_argument('--out', default='bench-results', help='output folder')
    p.add_argument('--no-plot', action='store_true', help='skip the PNG')
    p.set_defaults(func=run)

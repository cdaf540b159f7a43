"""``gpvit models``: the registered models with parameters, FLOPs, input size and published top-1."""
import argparse
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from ..tools.zoo import zoo_csv, zoo_markdown, zoo_table

    def progress(name: str) -> None:
        if not args.quiet:
            print(f'measuring {name} ...', file=sys.stderr, flush=True)

    infos = zoo_table(args.pattern or '', flops=not args.no_flops, progress=progress)
    print(zoo_markdown(infos), end='')
    if not args.no_flops:
        print('\nGFLOPs: torch.utils.flop_counter, 2 FLOPs per multiply-accumulate (GMACs = GFLOPs / 2), batch 1 at '
              'the input size shown. Published top-1: ImageNet-1k, reference weights (GPViT README; GC ViT README, '
              '2023 weights); not measured here.')
    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(zoo_csv(infos))
        print(f'wrote {path}', file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('models', help='list the registered models with parameters, FLOPs and published top-1',
                       description='Builds every registered model (random weights) and prints a Markdown table: '
                                   'parameters, FLOPs at the default input size (counted on fake tensors, '
                                   'so no compute), default input size and the published ImageNet top-1 of '
                                   'the reference weights.')
    p.add_argument('pattern', nargs='?', default='', help="wildcard filter on the names, e.g. 'gpvit_*'")
    p.add_argument('--no-flops', action='store_true', help='skip FLOP counting (faster)')
    p.add_argument('--csv', metavar='PATH', help='also write the table as CSV (exact integers)')
    p.add_argument('-q', '--quiet', action='store_true', help='no progress lines on stderr')
    p.set_defaults(func=run)

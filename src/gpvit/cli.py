"""The ``gpvit`` command line."""
import argparse
import logging
import sys
from typing import List, Optional

__all__ = ['main']


def _convert(args: argparse.Namespace) -> int:
    from .checkpoint import identify, read_checkpoint, save_safetensors
    from .factory import create_model
    state_dict = read_checkpoint(args.src, use_ema=args.use_ema, weights_only=not args.unsafe_pickle)
    name, kwargs, _ = identify(state_dict)
    model = create_model(name, checkpoint=state_dict, **kwargs)
    save_safetensors(model.state_dict(), args.dst, metadata={'architecture': name, 'format': 'gpvit'})
    n = sum(p.numel() for p in model.parameters())
    print(f'{args.src} -> {args.dst}: {name} ({n:,} parameters, {len(model.state_dict())} tensors)')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='gpvit', description='GPViT and GC ViT: models, checkpoints, training.')
    parser.add_argument('-v', '--verbose', action='store_true', help='log at INFO level')
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('convert', help='write any supported checkpoint as a safetensors file of this project',
                       description='Detects the model family, variant and layout of SRC (reference release, '
                                   'detector/segmentor backbone, mmpretrain port, timm, training checkpoint), '
                                   'loads it into the matching model to check it, and writes DST (.safetensors).')
    p.add_argument('src', help='checkpoint to convert')
    p.add_argument('dst', help='output .safetensors file')
    p.add_argument('--use-ema', action='store_true', help='take the EMA weights of a checkpoint that has them')
    p.add_argument('--unsafe-pickle', action='store_true',
                   help='allow arbitrary pickled objects in SRC (only for files you trust)')
    p.set_defaults(func=_convert)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format='%(levelname)s %(message)s')
    from .checkpoint import CheckpointError
    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f'gpvit {args.command}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())

"""``gpvit convert SRC DST``: any supported checkpoint -> a safetensors file of this project's layout."""
import argparse


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import read_checkpoint, save_safetensors
    from ..factory import create_model
    from ..models import identify
    state_dict = read_checkpoint(args.src, use_ema=args.use_ema, weights_only=not args.unsafe_pickle)
    name, kwargs, _ = identify(state_dict)
    model = create_model(name, checkpoint=state_dict, **kwargs)
    save_safetensors(model.state_dict(), args.dst, metadata={'architecture': name, 'format': 'gpvit'})
    n = sum(p.numel() for p in model.parameters())
    print(f'{args.src} -> {args.dst}: {name} ({n:,} parameters, {len(model.state_dict())} tensors)')
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('convert', help='write any supported checkpoint as a safetensors file of this project',
                       description='Detects the model family, variant and layout of SRC (reference release, '
                                   'detector/segmentor backbone, mmpretrain port, timm, training checkpoint), '
                                   'loads it into the matching model to check it, and writes DST (.safetensors).')
    p.add_argument('src', help='checkpoint to convert')
    p.add_argument('dst', help='output .safetensors file')
    p.add_argument('--use-ema', action='store_true', help='take the EMA weights of a checkpoint that has them')
    p.add_argument('--unsafe-pickle', action='store_true',
                   help='allow arbitrary pickled objects in SRC (only for files you trust)')
    p.set_defaults(func=run)

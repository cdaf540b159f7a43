"""``gpvit visualize --checkpoint CKPT IMAGE``: GPViT grouping maps over an image (the paper's Figure 6)."""
import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from ..tools.visualize import visualize
    out = args.output or str(Path(args.image).with_suffix('')) + '_groups.png'
    vis = visualize(args.image, out, checkpoint=args.checkpoint, model=args.model, size=args.size,
                    per_head=args.per_head, alpha=args.alpha, panel_px=args.panel_size, use_ema=args.use_ema,
                    weights_only=not args.unsafe_pickle)
    blocks = ', '.join(f'{m.name} ({m.num_groups} groups)' for m in vis.maps)
    print(f'{vis.model}: {len(vis.maps)} GP blocks [{blocks}] on {args.image} at '
          f'{vis.image_size[0]}x{vis.image_size[1]} -> {vis.path} ({vis.size[0]}x{vis.size[1]} px)')
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('visualize', help='draw the GPViT grouping maps of an image (paper Figure 6)',
                       description='Colours every image token by the group that claims it most in the grouping '
                                   'attention of each GP block (weights averaged over the heads, or per head), '
                                   'blended over the image: one PNG with a panel per block. The model is '
                                   'detected from the checkpoint (any supported format) unless --model names it.')
    p.add_argument('image', help='input image (any format PIL reads)')
    p.add_argument('--checkpoint', help='checkpoint of a GPViT model, any supported format')
    p.add_argument('--model', help='registered model name: overrides the detection, or, without --checkpoint, '
                                   'uses freshly initialised weights')
    p.add_argument('-o', '--output', help='output PNG (default: IMAGE_groups.png next to the image)')
    p.add_argument('--size', type=int, help="shorter image side fed to the model, rounded to a multiple of 16 "
                                            "(default: the model's input size)")
    p.add_argument('--per-head', action='store_true', help='one panel per head (one row per block)')
    p.add_argument('--alpha', type=float, default=0.5, help='opacity of the group colours (default 0.5)')
    p.add_argument('--panel-size', type=int, default=256, help='panel width in pixels (default 256)')
    p.add_argument('--use-ema', action='store_true', help='use the EMA weights of the checkpoint')
    p.add_argument('--unsafe-pickle', action='store_true',
                   help='allow arbitrary pickled objects in the checkpoint (only for files you trust)')
    p.set_defaults(func=run)

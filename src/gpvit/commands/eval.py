"""``gpvit eval --config FILE --checkpoint CKPT``: top-1 / top-5 of a checkpoint on the validation split."""
import argparse
import json


def run(args: argparse.Namespace) -> int:
    from .train import load
    cfg = load(args)
    from ..tasks import evaluate_checkpoint
    metrics = evaluate_checkpoint(cfg, args.checkpoint, use_ema=args.use_ema, device=args.device,
                                  crop_pct=args.crop_pct)
    import os
    if int(os.environ.get('RANK', '0')) == 0:
        line = json.dumps({'checkpoint': str(args.checkpoint), 'ema': args.use_ema, **metrics})
        print(line)
        if args.out:
            with open(args.out, 'w') as f:
                f.write(line + '\n')
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .train import add_config_args
    p = sub.add_parser('eval', help='evaluate a checkpoint (top-1 / top-5)',
                       description='Evaluate a checkpoint of this project (training checkpoint, best.pth, '
                                   'safetensors) or of a reference release on the config\'s validation split, with '
                                   'the reference test transforms (data.test_crop_pct, else data.crop_pct).')
    add_config_args(p)
    p.add_argument('--checkpoint', required=True, help='checkpoint file')
    p.add_argument('--use-ema', action='store_true', help='evaluate the EMA weights of a checkpoint that has them')
    p.add_argument('--crop-pct', type=float, default=None, help='override the test crop fraction')
    p.add_argument('--out', default=None, help='also write the metrics (JSON) to this file')
    p.set_defaults(func=run)

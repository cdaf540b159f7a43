"""``gpvit train --config FILE [KEY=VALUE ...]``: train a configuration (see docs/training.md).

Multi-GPU / multi-node: start it with torchrun, e.g.
``torchrun --nproc_per_node 8 -m gpvit train --config gpvit_l1_in1k data.root=/data/imagenet``.
"""
import argparse


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--config', '-c', required=True,
                   help='a packaged recipe by name (gpvit configs lists them) or a YAML file; a file wins')
    p.add_argument('overrides', nargs='*', metavar='KEY=VALUE',
                   help='override config values, e.g. optim.lr=1e-3 data.root=/data/imagenet (values read as YAML)')
    p.add_argument('--set', dest='set_overrides', action='append', default=[], metavar='KEY=VALUE',
                   help='same as a positional override (may be repeated)')
    p.add_argument('--device', choices=('cuda', 'cpu'), default=None, help='default: CUDA if available')


def load(args: argparse.Namespace):
    from ..tasks import load_config
    return load_config(args.config, list(args.overrides) + list(args.set_overrides))


def run(args: argparse.Namespace) -> int:
    cfg = load(args)  # every config error surfaces here, before any work
    if args.print_config:
        from ..engine.config import dump_config
        print(dump_config(cfg), end='')
        return 0
    from ..tasks import train
    try:
        result = train(cfg, resume=args.resume, device=args.device, override=args.override)
    except KeyboardInterrupt:
        import sys
        print(f'gpvit train: interrupted; continue with --resume auto (output_dir {cfg.output_dir})', file=sys.stderr)
        return 130
    if result.best:
        print(f'best {result.best["metric"]} {result.best["value"]:.2f} (epoch {result.best["epoch"]}, '
              f'update {result.best["step"]}); outputs in {result.output_dir}')
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('train', help='train a model from a config file',
                       description='Train a configuration (configs/<task>/*.yaml). Values can be overridden as '
                                   'KEY=VALUE; an unknown key or a bad value fails before any work. Under torchrun, '
                                   'every process runs this command (DistributedDataParallel).')
    add_config_args(p)
    p.add_argument('--resume', default=None, metavar='auto|PATH',
                   help="'auto': continue from OUTPUT_DIR/last.pth if it exists; or a checkpoint path. A config that "
                        "differs from the checkpoint's in a key that changes the result is refused")
    p.add_argument('--override', action='append', default=[], metavar='KEY',
                   help='with --resume: apply this changed key (or section, e.g. optim.lr, sched) from the '
                        "checkpoint's update on; repeatable; recorded in the checkpoints")
    p.add_argument('--print-config', action='store_true', help='print the resolved config and exit')
    p.set_defaults(func=run)

"""The ``gpvit`` command line: one sub-command per module of :mod:`gpvit.commands`."""
import argparse
import importlib
import logging
import sys
from typing import List, Optional

from .version import __version__

__all__ = ['main', 'build_parser']

# Each module defines ``register(subparsers)``, which adds its sub-command and sets ``func(args) -> int``.
COMMAND_MODULES = (
    'gpvit.commands.configs', 'gpvit.commands.convert',
    'gpvit.commands.train', 'gpvit.commands.eval', 'gpvit.commands.lmdb',
    'gpvit.commands.models', 'gpvit.commands.bench', 'gpvit.commands.visualize', 'gpvit.commands.export',
    'gpvit.commands.predict',
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='gpvit', description='GPViT and GC ViT: models, checkpoints, training.')
    parser.add_argument('-v', '--verbose', action='store_true', help='log at INFO level')
    parser.add_argument('--debug', action='store_true', help='show the traceback of an error (default: one line)')
    parser.add_argument('--version', action='version', version=f'gpvit {__version__}')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format='%(levelname)s %(message)s')
    from .errors import GPViTError
    try:
        return args.func(args)
    except (GPViTError, FileNotFoundError, IsADirectoryError, ValueError) as e:
        if args.debug:
            raise
        message = '; '.join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f'gpvit {args.command}: error: {message} (--debug shows the traceback)', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())

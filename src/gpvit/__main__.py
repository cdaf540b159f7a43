"""``python -m gpvit``: the ``gpvit`` command line."""
import sys

from .cli import main

sys.exit(main())

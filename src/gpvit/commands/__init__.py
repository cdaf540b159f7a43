"""Sub-commands of the ``gpvit`` command line (see :mod:`gpvit.cli`)."""

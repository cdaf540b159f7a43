"""The errors a user can cause, at the ground floor: every layer raises them, none needs another layer to.

Each is a ``ValueError`` whose message names the problem and the fix in one line; the command line prints
``gpvit <command>: error: <message>`` for them, without a traceback.
"""

__all__ = ['GPViTError', 'ConfigError', 'CheckpointError', 'DataError', 'TrainingError']


class GPViTError(ValueError):
    """Base of this package's user-facing errors."""


class ConfigError(GPViTError):
    """A configuration that cannot be used; the message starts with the dotted key (``optim.lr: ...``)."""


class CheckpointError(GPViTError):
    """A checkpoint that cannot be read, or that does not fit the model it is loaded into."""


class DataError(GPViTError):
    """A dataset that cannot be used (missing folders, no images, bad annotations)."""


class TrainingError(GPViTError):
    """A run that cannot go on as configured (its loss diverged)."""

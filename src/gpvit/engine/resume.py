"""Honest resume: a run continues only with the settings it was started with, unless told otherwise.

``--resume`` compares the config saved in the checkpoint with the one given now, key by key. A key that changes
the result (the model, the data and its augmentation, the optimiser, the schedule, the length, the batch
arithmetic, precision, EMA, the seed) must be the same; otherwise the resume is refused with the list of keys and
their old and new values. ``--override KEY`` (repeatable; a key or a section, e.g. ``optim.lr`` or ``sched``)
applies a change deliberately: the optimiser's hyper-parameters and the lr schedule are then rebuilt from the
new config and continue from the checkpoint's update; the change is logged and recorded in the checkpoints
(``overrides``: key, old, new value and the update it applies from). Keys that only say where things are or how
they are reported (``output_dir``, ``data.root``, loader workers, logging, checkpoint keeping) may change freely.
"""
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from ..errors import ConfigError

__all__ = ['RESULT_NEUTRAL', 'config_changes', 'check_resume_changes']

#: Dotted keys (or sections) whose value does not change the trained weights. ``train.threads`` and
#: ``optim.fused`` choose how the same arithmetic is carried out (thread count, fused or per-tensor optimiser
#: kernel), which can move the last bits but not the method; ``train.keep_freed_memory`` only where memory comes
#: from. A run checkpointed before ``optim.fused`` or ``train.keep_freed_memory`` existed resumes with them.
RESULT_NEUTRAL: Tuple[str, ...] = (
    'output_dir', 'dataset', 'log', 'data.root',
    'loader.workers', 'loader.pin_memory', 'loader.persistent_workers', 'loader.prefetch_factor',
    'loader.eval_batch_size',
    'train.log_interval', 'train.threads', 'train.keep_freed_memory', 'train.eval_interval', 'train.eval_at_start',
    'optim.fused',
    'ckpt.keep_last', 'ckpt.interval', 'ckpt.save_best', 'ema.eval',
)

Change = Tuple[str, Any, Any]


def _flatten(d: Mapping, prefix: str = '') -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f'{prefix}{k}'
        if isinstance(v, Mapping) and v and not key.endswith(('model.kwargs', 'optim.lr_mult')):
            out.update(_flatten(v, key + '.'))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def _covered(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + '.') for p in prefixes)


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> List[Change]:
    """``(dotted key, saved value, current value)`` of every result-changing key that differs, sorted by key."""
    a, b = _flatten(saved), _flatten(current)
    missing = object()
    changes = []
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, missing), b.get(key, missing)
        if old != new and not _covered(key, RESULT_NEUTRAL):
            changes.append((key, None if old is missing else old, None if new is missing else new))
    return changes


def check_resume_changes(saved: Mapping[str, Any], current: Mapping[str, Any], allowed: Sequence[str],
                         path: Any) -> List[Change]:
    """The changes ``--override`` allows; a :class:`ConfigError` listing the others if there are any."""
    changes = config_changes(saved, current)
    refused = [c for c in changes if not _covered(c[0], allowed)]
    if refused:
        listed = '; '.join(f'{k}: {old!r} -> {new!r}' for k, old, new in refused)
        raise ConfigError(
            f'--resume: the run in {path} was trained with other settings ({listed}). Resume with its own settings, '
            f'or apply the change deliberately with --override {" --override ".join(k for k, _, _ in refused)}, or '
            f'start a new run from its weights (another output_dir, model.pretrained={path})')
    return changes

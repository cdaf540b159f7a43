"""Training checkpoints: what they hold, atomic writes, keep-last-N, best, RNG states, ``--resume auto``.

A checkpoint is a dict of tensors and plain Python values (loadable with ``torch.load(weights_only=True)``)::

    format        'gpvit-train', version 1
    model         state dict (no DDP prefix)            model_ema   EMA state dict (if EMA)
    optimizer / scheduler / scaler                       state dicts
    epoch, step   completed epochs / optimiser updates   iters_per_epoch, global_batch
    rng           one entry per rank: torch CPU / CUDA, NumPy, Python states
    best          {'metric', 'value', 'step'}            metrics    the last evaluation
    model_spec    {'name', 'kwargs'} for gpvit.create_model      classes   class names (classification)
    config        the run's config as plain data

``gpvit.read_checkpoint`` returns its ``model`` (or, with ``use_ema=True``, ``model_ema``) weights, so
``gpvit.create_model(name, checkpoint=path)`` loads it like any other format.
"""
import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..checkpoint import atomic_save

__all__ = ['get_rng_state', 'set_rng_state', 'CheckpointManager', 'find_resume', 'load_training_checkpoint',
           'remove_stale_temporaries', 'FORMAT']

_logger = logging.getLogger(__name__)
FORMAT = 'gpvit-train'
_NUMBERED = re.compile(r'^checkpoint-(\d+)\.pth$')


def get_rng_state() -> Dict[str, Any]:
    """This process's RNG states as tensors and plain values (no pickled NumPy objects)."""
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': {'name': np_state[0], 'keys': torch.from_numpy(np_state[1].astype(np.int64)),
                  'pos': int(np_state[2]), 'has_gauss': int(np_state[3]), 'gauss': float(np_state[4])},
        'python': _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _to_lists(obj):
    return [_to_lists(v) for v in obj] if isinstance(obj, tuple) else obj


def _to_tuples(obj):
    return tuple(_to_tuples(v) for v in obj) if isinstance(obj, list) else obj


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['gauss']))
    random.setstate(_to_tuples(state['python']))
    if 'cuda' in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state['cuda'])
        except (RuntimeError, IndexError) as e:  # another GPU count
            _logger.warning('CUDA RNG state not restored: %s', e)


class CheckpointManager:
    """Writes ``last.pth`` (resume point), ``checkpoint-N.pth`` (kept: the last ``keep_last``) and ``best.pth``
    (weights only) into ``output_dir``, each atomically (temporary file + rename)."""

    def __init__(self, output_dir, keep_last: int = 3):
        self.dir = Path(output_dir)
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.dir / 'last.pth'

    @property
    def best(self) -> Path:
        return self.dir / 'best.pth'

    def numbered(self) -> List[Path]:
        found = [(int(m[1]), p) for p in self.dir.glob('checkpoint-*.pth') if (m := _NUMBERED.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: Dict[str, Any], number: Optional[int] = None) -> None:
        atomic_save(state, self.last)
        if number is not None and self.keep_last > 0:
            atomic_save(state, self.dir / f'checkpoint-{number:06d}.pth')
            for old in self.numbered()[:-self.keep_last]:
                old.unlink(missing_ok=True)

    def save_best(self, state: Dict[str, Any]) -> None:
        light = {k: v for k, v in state.items() if k not in ('optimizer', 'scheduler', 'scaler', 'rng')}
        atomic_save(light, self.best)


_REQUIRED = ('model', 'optimizer', 'scheduler', 'scaler', 'step', 'epoch')


def load_training_checkpoint(path) -> Dict[str, Any]:
    """A training checkpoint of this project, checked to hold everything a resume needs."""
    from ..errors import CheckpointError
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f'--resume: {path} is a directory; give a checkpoint file (e.g. {path / "last.pth"})')
    if path.stat().st_size == 0:
        raise CheckpointError(f'{path}: the file is empty (0 bytes): a copy or a write that did not finish')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable file is the same error to the user)
        raise CheckpointError(f'{path}: not a readable training checkpoint ({type(e).__name__}: '
                              f'{str(e).splitlines()[0] if str(e) else "truncated or corrupt"})') from e
    if not isinstance(state, dict) or state.get('format') != FORMAT:
        raise CheckpointError(f'{path}: not a training checkpoint of this project (no format={FORMAT!r}); to start '
                              f'from its weights, set model.pretrained instead of --resume')
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f'{path}: holds the weights only (no {", ".join(missing)}), as best.pth does; resume '
                              f'from last.pth or a checkpoint-N.pth, or start a new run from these weights with '
                              f'model.pretrained={path}')
    return state


def find_resume(resume: Optional[str], output_dir) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """``(path, state)`` to resume from, or None for a fresh start.

    ``'auto'``: ``output_dir/last.pth``; if that file is unreadable (a disk that filled up, a copy cut short), the
    newest readable ``checkpoint-N.pth`` instead, with a warning naming both. A path: that file, which must be a
    complete training checkpoint.
    """
    if not resume:
        return None
    if resume != 'auto':
        path = Path(resume)
        if not path.exists():
            raise FileNotFoundError(f'--resume: no checkpoint at {path}')
        return path, load_training_checkpoint(path)
    manager = CheckpointManager(output_dir)
    candidates = [manager.last] + manager.numbered()[::-1]
    failures = []
    for path in candidates:
        if not path.is_file():
            continue
        try:
            state = load_training_checkpoint(path)
        except Exception as e:  # noqa: BLE001  (fall back to the next checkpoint, saying why)
            failures.append(f'{path.name} ({e})')
            continue
        if failures:
            _logger.warning('resume auto: %s unusable; resuming from %s (update %d) instead', '; '.join(failures),
                            path.name, state['step'])
        return path, state
    if failures:
        from ..errors import CheckpointError
        raise CheckpointError(f'resume auto: no usable checkpoint in {output_dir}: {"; ".join(failures)}')
    return None


def remove_stale_temporaries(output_dir) -> List[Path]:
    """Delete the temporary files of checkpoint writes a killed run left behind (``.last.pth.*.tmp``); call it
    while holding the output directory's lock."""
    removed = []
    for p in Path(output_dir).glob('.*.tmp'):
        if p.is_file() and p.name.endswith('.tmp') and '.pth.' in p.name:
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        _logger.info('removed %d temporary file(s) of an interrupted checkpoint write', len(removed))
    return removed


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop the records of ``path`` logged after update ``max_step`` (a resumed run logs them again)."""
    import json
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if rec.get('step', 0) <= max_step:
            kept.append(line)
    tmp = path.with_suffix('.jsonl.tmp')
    tmp.write_text(''.join(k + '\n' for k in kept))
    os.replace(tmp, path)

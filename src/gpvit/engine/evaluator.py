"""Evaluate a checkpoint on a task's validation split (``gpvit eval``)."""
import logging
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .config import Config
from .data import build_eval_loader
from .distributed import init_distributed
from .trainer import autocast_context

__all__ = ['evaluate_checkpoint']

_logger = logging.getLogger('gpvit.eval')


def _model_spec(checkpoint: Path, cfg: Config, task) -> Dict[str, Any]:
    """The model to build: the one a project training checkpoint records, else the config's."""
    try:
        state = torch.load(checkpoint, map_location='cpu', weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (other formats: read by gpvit.create_model below)
        state = None
    if isinstance(state, dict) and isinstance(state.get('model_spec'), dict):
        spec = state['model_spec']
        if spec['name'] != cfg.model.name:
            _logger.warning('the checkpoint holds a %s, the config names %s: evaluating the %s',
                            spec['name'], cfg.model.name, spec['name'])
        return {'name': spec['name'], 'kwargs': dict(spec['kwargs'])}
    return task.model_spec()


def evaluate_checkpoint(cfg: Config, checkpoint, use_ema: bool = False, device: Optional[str] = None,
                        crop_pct: Optional[float] = None) -> Dict[str, float]:
    """Metrics of ``checkpoint`` (any format ``gpvit.create_model`` reads) on ``cfg``'s validation split.

    Uses the test transforms (``data.test_crop_pct``, falling back to ``data.crop_pct``, unless ``crop_pct``
    is given). Runs distributed under torchrun (each process evaluates a shard; metrics are summed).
    """
    from ..factory import create_model
    from ..tasks import get_task
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f'--checkpoint: no file at {checkpoint}')
    get_task(cfg.task).preflight(cfg, splits=('val',))
    dist = init_distributed(device)
    try:
        task = get_task(cfg.task)(cfg, dist)
        test_crop = crop_pct or getattr(cfg.data, 'test_crop_pct', None)
        kwargs = {'crop_pct': test_crop} if test_crop else {}
        datasets = task.build_datasets(splits=('val',), **kwargs)
        spec = _model_spec(Path(checkpoint), cfg, task)
        model = create_model(spec['name'], checkpoint=str(checkpoint), use_ema=use_ema, **spec['kwargs'])
        model.to(dist.device).eval()
        if cfg.model.channels_last:
            model.to(memory_format=torch.channels_last)
        ld = cfg.loader
        loader = build_eval_loader(datasets['val'], ld.eval_batch_size or ld.batch_size, dist.world_size,
                                   dist.rank, ld.workers, ld.pin_memory, task.collate_fn('val'))
        with torch.no_grad(), autocast_context(cfg.train.amp, dist.device, cfg.train.amp_on_cpu):
            return task.evaluate(model, loader)
    finally:
        dist.close()

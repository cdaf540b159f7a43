"""Evaluate a model on a task's validation split (what ``gpvit eval`` runs)."""
import logging
from typing import Dict, Optional, Type

import torch
import torch.nn as nn

from .config import Config
from .data import build_eval_loader
from .distributed import init_distributed
from .malloc import keep_freed_memory
from .task import Task
from .trainer import autocast_context

__all__ = ['evaluate']

_logger = logging.getLogger('gpvit.eval')


def evaluate(cfg: Config, task: Type[Task], model: nn.Module, device: Optional[str] = None,
             crop_pct: Optional[float] = None) -> Dict[str, float]:
    """Metrics of ``model`` on ``cfg``'s validation split, with the test transforms (``data.test_crop_pct``,
    falling back to ``data.crop_pct``, unless ``crop_pct`` is given). Distributed under torchrun: each process
    evaluates a shard and the metrics are reduced. :func:`gpvit.tasks.evaluate_checkpoint` builds the model
    from a checkpoint first."""
    dist = init_distributed(device)
    if cfg.train.keep_freed_memory and dist.device.type == 'cpu':
        keep_freed_memory()  # as in training: activations reused, not faulted in afresh for every batch
    runner = task(cfg, dist)
    test_crop = crop_pct or getattr(cfg.data, 'test_crop_pct', None)
    kwargs = {'crop_pct': test_crop} if test_crop else {}
    datasets = runner.build_datasets(splits=('val',), **kwargs)
    model.to(dist.device).eval()
    if cfg.model.channels_last:
        model.to(memory_format=torch.channels_last)
    ld = cfg.loader
    loader = build_eval_loader(datasets['val'], ld.eval_batch_size or ld.batch_size, dist.world_size,
                               dist.rank, ld.workers, ld.pin_memory, runner.collate_fn('val'))
    with torch.no_grad(), autocast_context(cfg.train.amp, dist.device, cfg.train.amp_on_cpu):
        return runner.evaluate(model, loader)

"""Optimiser with the recipes' parameter groups, and per-iteration lr schedules (timm schedulers).

Parameter groups: weight decay is off for 1-D parameters (biases, norm weights, layer scales), for the
names the model's ``no_weight_decay()`` lists (position embeddings, group tokens, ...; switchable), and for
name substrings in ``optim.no_decay_keys``. ``optim.lr_mult`` scales the lr of parameters by name (timm's
``lr_scale`` group key, honoured by timm's schedulers); ``optim.layer_decay`` is timm's layer-wise decay.

Schedules are stepped after every optimiser update with the update count, whatever the unit of the config.
"""
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler
from timm.scheduler.scheduler import Scheduler

from .config import Config, ConfigError

__all__ = ['param_groups', 'build_optimizer', 'build_scheduler', 'ScheduleLength', 'effective_lr']

_logger = logging.getLogger(__name__)


def param_groups(model: nn.Module, weight_decay: float, no_decay_keys: Iterable[str] = (),
                 no_decay_from_model: bool = True, lr_mult: Optional[Dict[str, float]] = None) -> List[Dict]:
    # not timm's param_groups_weight_decay: the recipes need per-name lr multipliers and extra no-decay keys
    """Split trainable parameters into (decay, no decay) x (lr multiplier) groups.

    Returns:
        Param-group dicts with ``params``, ``weight_decay``, ``lr_scale`` and ``names`` (for inspection;
        the optimiser ignores it).
    """
    skip = set()
    if no_decay_from_model and hasattr(model, 'no_weight_decay'):
        skip = set(model.no_weight_decay())
    no_decay_keys = tuple(no_decay_keys)
    lr_mult = dict(lr_mult or {})
    groups: Dict[Tuple[bool, float], Dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith('.bias') or name in skip or any(k in name for k in no_decay_keys)
        scale = next((m for k, m in lr_mult.items() if k in name), 1.0)
        g = groups.setdefault((no_decay, scale), {'params': [], 'names': [],
                                                   'weight_decay': 0. if no_decay else weight_decay,
                                                   'lr_scale': scale})
        g['params'].append(p)
        g['names'].append(name)
    return [groups[k] for k in sorted(groups)]


def effective_lr(cfg: Config, global_batch: int) -> float:
    """``optim.lr``, scaled linearly by ``global_batch / optim.lr_scale_batch`` when that is set."""
    lr = cfg.optim.lr
    if cfg.optim.lr_scale_batch:
        lr = lr * global_batch / cfg.optim.lr_scale_batch
    return lr


#: timm optimiser names that build torch's Adam, AdamW or SGD, which have a fused implementation.
FUSED_OPTIMIZERS = ('adam', 'adamw', 'sgd', 'momentum', 'nesterov')


def build_optimizer(model: nn.Module, cfg: Config, lr: float) -> torch.optim.Optimizer:
    """The configured optimiser over the model's parameter groups (weight decay, lr multipliers, layer decay).

    With ``optim.fused`` (the default), Adam, AdamW and SGD run torch's fused kernel: one pass over all
    parameters instead of a loop of per-tensor ops (on CPUs, where torch does not default to the multi-tensor
    path, the AdamW step of GPViT-L1 takes about a quarter of the time); same update rule, same state.
    """
    o = cfg.optim
    kwargs: Dict[str, Any] = dict(lr=lr, weight_decay=o.weight_decay)
    name = o.name.lower()
    if o.fused and name in FUSED_OPTIMIZERS and all(
            p.device.type in ('cpu', 'cuda') and p.is_floating_point() for p in model.parameters()):
        kwargs['fused'] = True
    if 'adam' in name or 'lamb' in name or 'lion' in name:
        kwargs['betas'] = tuple(o.betas)
    if 'adam' in name or 'lamb' in name:
        kwargs['eps'] = o.eps
    if name in ('sgd', 'momentum', 'nesterov', 'rmsprop', 'rmsproptf'):
        kwargs['momentum'] = o.momentum
    if o.layer_decay is not None:
        if o.lr_mult or o.no_decay_keys:
            raise ConfigError('optim.layer_decay: cannot be combined with optim.lr_mult / optim.no_decay_keys')
        return create_optimizer_v2(model, opt=name, layer_decay=o.layer_decay, filter_bias_and_bn=True, **kwargs)
    groups = param_groups(model, o.weight_decay, o.no_decay_keys, o.no_decay_from_model, o.lr_mult)
    for g in groups:
        g.pop('names')
    try:
        return create_optimizer_v2(groups, opt=name, **kwargs)
    except (AssertionError, ValueError) as e:
        raise ConfigError(f'optim.name: {e}') from e


@dataclass(frozen=True)
class ScheduleLength:
    """A run's length in optimiser updates."""
    total: int  # updates of the whole run
    per_epoch: int  # updates per epoch (an iteration-based run still walks through epochs of data)
    epoch_based: bool

    def to_iters(self, value: float) -> int:
        """A length in the run's unit (epochs or iterations) -> updates."""
        return int(round(value * self.per_epoch)) if self.epoch_based else int(round(value))


def _with_scaled_warmup(cls):
    """A timm scheduler whose warmup multiplies the schedule by a factor rising linearly from ``ratio`` to 1
    (mmcv's ``warmup='linear'``), instead of ramping from a start value to the base lr (timm's)."""

    class ScaledWarmup(cls):
        def __init__(self, *args, scaled_warmup_t: int = 0, scaled_warmup_ratio: float = 0., **kwargs):
            self.scaled_warmup_t = scaled_warmup_t
            self.scaled_warmup_ratio = scaled_warmup_ratio
            super().__init__(*args, **kwargs)

        def _get_lr(self, t: int) -> List[float]:
            lrs = super()._get_lr(t)
            if t < self.scaled_warmup_t:
                k = 1 - (1 - self.scaled_warmup_ratio) * (1 - t / self.scaled_warmup_t)
                lrs = [v * k for v in lrs]
            return lrs

    ScaledWarmup.__name__ = ScaledWarmup.__qualname__ = f'ScaledWarmup{cls.__name__}'
    return ScaledWarmup


class ConstantLRScheduler(Scheduler):
    """Constant lr with timm-style linear warmup."""

    def __init__(self, optimizer, warmup_t: int = 0, warmup_lr_init: float = 0., t_in_epochs: bool = False,
                 **kwargs):
        super().__init__(optimizer, param_group_field='lr', t_in_epochs=t_in_epochs, **kwargs)
        self.warmup_t = warmup_t
        self.warmup_lr_init = warmup_lr_init
        if warmup_t:
            self.warmup_steps = [(v - warmup_lr_init) / warmup_t for v in self.base_values]
            super().update_groups(warmup_lr_init)
        else:
            self.warmup_steps = [1 for _ in self.base_values]

    def _get_lr(self, t: int) -> List[float]:
        if t < self.warmup_t:
            return [self.warmup_lr_init + t * s for s in self.warmup_steps]
        return list(self.base_values)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, length: ScheduleLength, lr: float) -> Scheduler:
    """A timm scheduler over optimiser updates (``t_in_epochs=False``); call ``step_update(n_updates)``."""
    s = cfg.sched
    if s.warmup_epochs is not None:
        warmup = int(round(s.warmup_epochs * length.per_epoch))
    else:
        warmup = s.warmup_iters or 0
    cooldown = length.to_iters(s.cooldown_epochs)
    decay_t = length.total - cooldown
    if warmup >= decay_t:
        raise ConfigError(f'sched.warmup_{"epochs" if s.warmup_epochs is not None else "iters"}: the warmup '
                          f'({warmup} updates) must be shorter than the schedule ({decay_t} updates)')
    min_lr = s.min_lr if s.min_lr is not None else (s.min_lr_ratio or 0.) * lr
    if s.warmup_lr is not None:
        warmup_lr = s.warmup_lr
    else:
        warmup_lr = (s.warmup_ratio if s.warmup_ratio is not None else 0.) * lr
    common = dict(t_in_epochs=False)
    if s.warmup_mode == 'linear':
        common.update(warmup_t=warmup, warmup_lr_init=warmup_lr)
        wrap = lambda c: c  # noqa: E731
    else:
        ratio = s.warmup_ratio if s.warmup_ratio is not None else 0.
        common.update(scaled_warmup_t=warmup, scaled_warmup_ratio=ratio)
        wrap = _with_scaled_warmup
    if s.name == 'cosine':
        return wrap(CosineLRScheduler)(optimizer, t_initial=decay_t, lr_min=min_lr, cycle_limit=1, **common)
    if s.name == 'poly':
        return wrap(PolyLRScheduler)(optimizer, t_initial=decay_t, power=s.power, lr_min=min_lr, cycle_limit=1,
                                     **common)
    if s.name == 'step':
        # timm decays once t + 1 reaches a milestone; update t (0-based) should decay once t reaches it (mmcv).
        milestones = [length.to_iters(m) + 1 for m in s.milestones]
        if s.warmup_mode == 'linear':
            common['warmup_prefix'] = False
        return wrap(MultiStepLRScheduler)(optimizer, decay_t=milestones, decay_rate=s.gamma, **common)
    return wrap(ConstantLRScheduler)(optimizer, **common)


def lr_at(scheduler: Scheduler, t: int) -> float:
    """The (first group's) lr the schedule gives at update ``t``, without changing the optimiser."""
    return scheduler._get_lr(t)[0]


def check_schedule(length: ScheduleLength) -> None:
    if length.per_epoch < 1:
        raise ConfigError('loader.batch_size: larger than the training set split over the processes '
                          '(an epoch would have no full batch)')
    if not math.isfinite(length.total) or length.total < 1:
        raise ConfigError('train.epochs / train.iters: the run has no update')

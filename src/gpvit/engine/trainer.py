"""The training loop, shared by every task.

:func:`train` runs a whole configuration: distributed setup, the task's datasets and model, samplers and
loaders, optimiser and schedule, mixed precision, gradient accumulation and clipping, EMA, evaluation,
checkpoints, logs and curves. It is what ``gpvit train`` calls, and it can be called from Python.

Reproducibility: with the same config and world size, a run gives the same weights whether or not it was
killed and resumed (``resume='auto'``): checkpoints hold the model, optimiser, schedule, scaler, EMA, the
position in the data (epoch and update) and every process's RNG states, and the data order and per-sample
augmentation are functions of (seed, epoch, index) only (see :mod:`gpvit.engine.data`). On CPU the result is
bit-exact; on GPU it is as exact as the kernels (``train.deterministic=true``).
"""
import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from timm.utils import unwrap_model

from ..errors import CheckpointError, TrainingError
from .config import Config, ConfigError, dump_config, to_dict
from .data import ResumableSampler, build_eval_loader, build_train_loader
from .distributed import DistContext, all_gather_object, all_reduce_sum, barrier, init_distributed, wrap_ddp
from .logs import MetricsLog, plot_curves, setup_logging
from .malloc import keep_freed_memory
from .optim import ScheduleLength, build_optimizer, build_scheduler, check_schedule, effective_lr
from .precision import cpu_bf16_flags, cpu_precision_hint
from .lock import RunLock
from .resume import check_resume_changes
from .state import (FORMAT, CheckpointManager, find_resume, get_rng_state, remove_stale_temporaries,
                    set_rng_state, truncate_jsonl)
from .task import Task

__all__ = ['train', 'TrainResult', 'autocast_context', 'seed_everything']

_logger = logging.getLogger('gpvit.train')


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""
    model: nn.Module  # the trained model, unwrapped (no DDP)
    ema: Optional[nn.Module]  # the EMA model, if any
    history: List[Dict[str, Any]] = field(default_factory=list)  # this process's records (rank 0: metrics.jsonl)
    best: Optional[Dict[str, Any]] = None
    output_dir: Optional[Path] = None
    step: int = 0
    epoch: int = 0


def seed_everything(seed: int) -> None:
    # not timm's random_seed: numpy takes seeds below 2**32 only, and the per-update reseed of long runs exceeds it
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


_FP16_ON_CPU = ('train.amp: fp16 on a CPU is slow and off by default; use bf16 or none there, or set '
                'train.amp_on_cpu=true to run the fp16 recipe (with its GradScaler) on the CPU anyway')


def autocast_context(amp: str, device: torch.device, allow_cpu: bool = False):
    """``torch.autocast`` for ``amp`` ('none', 'bf16', 'fp16') on ``device``; a null context for bf16 on a CPU
    without ``allow_cpu``."""
    if amp == 'none':
        return contextlib.nullcontext()
    if device.type == 'cpu' and not allow_cpu:
        if amp == 'fp16':
            raise ConfigError(_FP16_ON_CPU)
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == 'bf16' else torch.float16)


def _check_tensorboard(cfg: Config) -> None:
    if cfg.log.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError('log.tensorboard: needs the tensorboard package (pip install "gpvit[tensorboard]"), '
                              'or set log.tensorboard=false') from None


def _check_batch(cfg: Config, world_size: int) -> None:
    gb, bs = cfg.train.global_batch, cfg.loader.batch_size
    if gb is not None and gb % (bs * world_size):
        raise ConfigError(f'train.global_batch: {gb} is not a multiple of loader.batch_size x processes = '
                          f'{bs} x {world_size}; change loader.batch_size, or set train.global_batch=null '
                          f'and train.accum_steps')


class _Trainer:
    def __init__(self, cfg: Config, task: Type[Task], resume: Optional[str], dist: DistContext,
                 hooks: Dict[str, Callable], override: Sequence[str] = ()):
        self.cfg, self.task_cls, self.dist, self.hooks = cfg, task, dist, hooks
        self.out = Path(cfg.output_dir)
        self.resume_arg = resume
        self.override = tuple(override)
        self.lock: Optional[RunLock] = None
        self.log_handler = None
        self.applied: List[Dict[str, Any]] = []

    # -- setup -------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg, dist = self.cfg, self.dist
        t = cfg.train
        if t.amp == 'fp16' and dist.device.type == 'cpu' and not t.amp_on_cpu:
            raise ConfigError(_FP16_ON_CPU)
        if t.threads:
            torch.set_num_threads(t.threads)
        if t.keep_freed_memory and dist.device.type == 'cpu':
            keep_freed_memory()
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif dist.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        if not self.resume_arg and (self.out / 'last.pth').exists():
            raise ConfigError(f'output_dir: {self.out} already holds a run (last.pth); continue it with '
                              f'--resume auto, or choose another output_dir')
        self._lock_output_dir()
        # The checkpoint to resume from, read and checked against this config before any data or model is built.
        self.resume_state = self._load_resume()
        self.log_handler = setup_logging(self.out, dist.is_main)
        self.task = self.task_cls(cfg, dist)

        # Data first (it fixes the number of classes), then the model, seeded identically on every rank.
        self.datasets = self.task.build_datasets()
        seed_everything(t.seed)
        model = self.task.build_model()
        if cfg.model.grad_checkpointing:
            if not hasattr(model, 'set_grad_checkpointing'):
                raise ConfigError(f'model.grad_checkpointing: {cfg.model.name} does not support it')
            model.set_grad_checkpointing(True)
        if cfg.model.sync_bn and dist.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(dist.device)
        if cfg.model.channels_last:
            model.to(memory_format=torch.channels_last)
        seed_everything(t.seed + dist.rank)

        # Batch arithmetic and the linear lr scaling rule.
        per_process = cfg.loader.batch_size * dist.world_size
        if t.global_batch is not None:
            if t.global_batch % per_process:
                raise ConfigError(f'train.global_batch: {t.global_batch} is not a multiple of loader.batch_size x '
                                  f'processes = {cfg.loader.batch_size} x {dist.world_size}')
            self.accum = t.global_batch // per_process
        else:
            self.accum = t.accum_steps
        self.global_batch = per_process * self.accum
        self.lr = effective_lr(cfg, self.global_batch)

        train_ds = self.datasets['train']
        self.sampler = ResumableSampler(train_ds, dist.world_size, dist.rank, shuffle=True, seed=t.seed)
        ld = cfg.loader
        self.train_loader = build_train_loader(train_ds, ld.batch_size, self.sampler, ld.workers, ld.pin_memory,
                                               ld.persistent_workers, ld.prefetch_factor,
                                               self.task.collate_fn('train'))
        self.val_loader = None
        if 'val' in self.datasets:
            self.val_loader = build_eval_loader(self.datasets['val'], ld.eval_batch_size or ld.batch_size,
                                                dist.world_size, dist.rank, ld.workers, ld.pin_memory,
                                                self.task.collate_fn('val'))
        per_epoch = len(self.train_loader) // self.accum
        epoch_based = t.epochs is not None
        self.length = ScheduleLength(total=(t.epochs * per_epoch if epoch_based else t.iters), per_epoch=per_epoch,
                                     epoch_based=epoch_based)
        check_schedule(self.length)

        self.optimizer = build_optimizer(model, cfg, self.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.length, self.lr)
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=t.amp == 'fp16')
        self.autocast = lambda: autocast_context(t.amp, dist.device, t.amp_on_cpu)

        self.model = model
        if dist.distributed:
            self.model = wrap_ddp(model, dist, t.find_unused_parameters)
        self.ema = None
        if cfg.ema.enabled:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup,
                                  device=torch.device('cpu') if cfg.ema.on_cpu else None)
        if t.compile:
            self.model = torch.compile(self.model)

        self.ckpt = CheckpointManager(self.out, cfg.ckpt.keep_last)
        self.metrics = MetricsLog(self.out, cfg.log.tensorboard, enabled=dist.is_main)
        self.step = 0
        self.epoch = 0
        self.best: Optional[Dict[str, Any]] = None
        self.overrides: List[Dict[str, Any]] = []  # --override changes applied on resume: key, old, new, step
        self.pending_record: Optional[Dict[str, Any]] = None  # a period saved before its evaluation ran
        self.history: List[Dict[str, Any]] = []
        self.task.train_begin(unwrap_model(self.model))
        self._resume()
        if dist.is_main:
            (self.out / 'config.yaml').write_text(dump_config(cfg))
        n_params = sum(p.numel() for p in model.parameters())
        _logger.info('task %s, model %s (%s parameters), %d process(es) on %s', cfg.task, cfg.model.name,
                     f'{n_params:,}', dist.world_size, dist.device)
        _logger.info('data: %d training / %s validation samples; batch %d per process x %d process(es) x %d '
                     'accumulation = global batch %d; lr %.3g%s', len(train_ds),
                     len(self.datasets['val']) if 'val' in self.datasets else 0, cfg.loader.batch_size,
                     dist.world_size, self.accum, self.global_batch, self.lr,
                     f' (= {cfg.optim.lr:g} x {self.global_batch} / {cfg.optim.lr_scale_batch})'
                     if cfg.optim.lr_scale_batch else '')
        _logger.info('%d updates (%d per epoch), output in %s', self.length.total, per_epoch, self.out)
        if dist.device.type == 'cpu':
            hint = cpu_precision_hint(t.amp, t.amp_on_cpu, cpu_bf16_flags())
            if hint is not None:
                _logger.log(*hint)

    def _lock_output_dir(self) -> None:
        """Rank 0 takes the output directory's lock (one live run per directory) and clears the temporary files
        of a killed run's checkpoint writes; every rank learns whether it could."""
        error = None
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            try:
                self.lock = RunLock(self.out).acquire()
                remove_stale_temporaries(self.out)
            except ConfigError as e:
                error = str(e)
        errors = all_gather_object(error)  # collective: no rank waits for one that failed
        if errors[0]:
            raise ConfigError(errors[0])

    def _load_resume(self) -> Optional[Dict[str, Any]]:
        found = find_resume(self.resume_arg, self.out)
        if found is None:
            if self.resume_arg == 'auto':
                _logger.info('resume auto: no checkpoint in %s, starting from scratch', self.out)
            if self.override:
                _logger.warning('--override %s: nothing to resume, the run starts with the config as given',
                                ' '.join(self.override))
            return None
        path, state = found
        saved = state.get('config')
        if isinstance(saved, dict):
            changes = check_resume_changes(saved, to_dict(self.cfg), self.override, path)
            self.applied = [{'key': k, 'old': old, 'new': new, 'step': state['step']} for k, old, new in changes]
        else:
            _logger.warning('%s records no config: its settings cannot be compared with this config', path)
        state['_path'] = str(path)
        return state

    def _resume(self) -> None:
        state = self.resume_state
        self.resume_state = None
        if state is None:
            if self.dist.is_main and self.metrics.path.exists():
                self.metrics.path.unlink()  # a fresh run starts a fresh log
            self.scheduler.step_update(0)
            return
        path = state['_path']
        model = unwrap_model(self.model)
        try:
            model.load_state_dict(state['model'])
        except RuntimeError as e:
            raise CheckpointError(f'--resume: the weights in {path} do not fit the model this config builds '
                                  f'({str(e).splitlines()[0]})') from None
        # The optimiser's state (moments, step counts) comes from the checkpoint, its hyper-parameters from this
        # config, and the lr schedule is rebuilt from this config: the same as the checkpoint's unless --override
        # changed them, in which case the change applies from this update on.
        fresh = [{k: v for k, v in g.items() if k != 'params'} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state['optimizer'])
        except ValueError as e:
            raise CheckpointError(f'--resume: the optimiser state in {path} does not fit this config\'s parameter '
                                  f'groups ({e})') from None
        for group, hyper in zip(self.optimizer.param_groups, fresh):
            group.update(hyper)
        self.scaler.load_state_dict(state['scaler'])
        if self.ema is not None:
            if 'model_ema' not in state:
                raise ConfigError(f'ema.enabled: the checkpoint {path} has no EMA weights')
            self.ema.module.load_state_dict(state['model_ema'])
        self.step, self.epoch, self.best = state['step'], state['epoch'], state.get('best')
        self.pending_record = state.get('pending_record')
        self.overrides = list(state.get('overrides') or []) + self.applied
        for o in self.applied:
            _logger.warning('--override %s: %r -> %r, applied from update %d on', o['key'], o['old'], o['new'],
                            o['step'])
        if state.get('iters_per_epoch') != self.length.per_epoch or state.get('global_batch') != self.global_batch:
            _logger.warning('resuming with another data layout (updates per epoch %s -> %d, global batch %s -> %d): '
                            'the run continues but will not reproduce an uninterrupted one',
                            state.get('iters_per_epoch'), self.length.per_epoch, state.get('global_batch'),
                            self.global_batch)
        rng = state.get('rng') or []
        if len(rng) == self.dist.world_size:
            set_rng_state(rng[self.dist.rank])
        else:
            _logger.warning('checkpoint has RNG states of %d process(es), this run has %d: RNG reseeded',
                            len(rng), self.dist.world_size)
            seed_everything(self.cfg.train.seed + self.dist.rank + 7919 * self.step)
        self.scheduler.step_update(self.step)
        if self.dist.is_main:
            # records of later updates go (they are logged again); a period whose evaluation is pending may have
            # been logged by a run killed while writing its final checkpoint: its record is written again
            truncate_jsonl(self.metrics.path, self.step - 1 if self.pending_record is not None else self.step)
        _logger.info('resumed from %s at epoch %d, update %d', path, self.epoch, self.step)

    # -- checkpoints -------------------------------------------------------------------------------------------

    def _state(self, metrics: Optional[Dict[str, float]]) -> Dict[str, Any]:
        rng = all_gather_object(get_rng_state())  # collective: every rank calls it
        state = {
            'format': FORMAT, 'version': 1,
            'model': unwrap_model(self.model).state_dict(),
            'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict(),
            'scaler': self.scaler.state_dict(),
            'epoch': self.epoch, 'step': self.step,
            'iters_per_epoch': self.length.per_epoch, 'global_batch': self.global_batch,
            'rng': rng,
            'best': self.best,
            'overrides': self.overrides,
            'metrics': metrics or {},
            'model_spec': self.task.model_spec(),
            'task': self.cfg.task,
            'config': to_dict(self.cfg),
        }
        if self.ema is not None:
            state['model_ema'] = self.ema.module.state_dict()
        classes = getattr(self.task, 'classes', None)
        if classes is not None:
            state['classes'] = list(classes)
        return state

    def _save(self, metrics: Optional[Dict[str, float]], numbered: Optional[int], is_best: bool,
              pending: Optional[Dict[str, Any]] = None) -> None:
        """Write ``last.pth`` (and ``checkpoint-N.pth``, ``best.pth``); ``pending``: the record of a period whose
        evaluation has not run yet (saved with it, completed on resume)."""
        state = self._state(metrics)
        if pending is not None:
            state['pending_record'] = pending
        if self.dist.is_main:
            self.ckpt.save(state, numbered)
            if is_best:
                self.ckpt.save_best(state)
        barrier()

    # -- evaluation --------------------------------------------------------------------------------------------

    def evaluate(self) -> Dict[str, float]:
        if self.val_loader is None:
            return {}
        out = {}
        models = [('val', unwrap_model(self.model))]
        if self.ema is not None and self.cfg.ema.eval and not self.cfg.ema.on_cpu:
            models.append(('val_ema', self.ema.module))
        for prefix, m in models:
            was_training = m.training
            m.eval()
            with self.autocast():
                metrics = self.task.evaluate(m, self.val_loader)
            m.train(was_training)
            if self.task.primary_metric not in metrics:
                raise RuntimeError(f'{type(self.task).__name__}.evaluate() returned no {self.task.primary_metric!r}')
            out.update({f'{prefix}_{k}': v for k, v in metrics.items()})
        return out

    def _primary(self, metrics: Dict[str, float]) -> Optional[float]:
        key = f'val_ema_{self.task.primary_metric}' if f'val_ema_{self.task.primary_metric}' in metrics \
            else f'val_{self.task.primary_metric}'
        return metrics.get(key)

    # -- the loop ----------------------------------------------------------------------------------------------

    def _progress(self, total: int, desc: str):
        from tqdm import tqdm
        disable = True if not (self.dist.is_main and self.cfg.log.progress) else None  # None: only on a TTY
        return tqdm(total=total, desc=desc, unit='it', disable=disable, dynamic_ncols=True, leave=False)

    def run(self) -> TrainResult:
        cfg, t = self.cfg, self.cfg.train
        length = self.length
        per_epoch = length.per_epoch
        model = self.model
        unwrapped = unwrap_model(model)
        model.train()
        if t.eval_at_start and self.step == 0:
            m = self.evaluate()
            _logger.info('before training: %s', _fmt(m))
        if self.pending_record is not None:  # resumed after a period whose evaluation did not finish
            _logger.info('evaluating the period that ended at update %d before training on', self.step)
            record, self.pending_record = self.pending_record, None
            self._complete_period(record, evaluate=self.val_loader is not None)
        period_sums: Dict[str, float] = {}
        counts: Dict[str, float] = {}
        period_start = time.time()
        hook = self.hooks.get('after_step')
        while self.step < length.total:
            epoch = self.step // per_epoch
            offset = self.step - epoch * per_epoch  # updates of this epoch already done (mid-epoch resume)
            self.sampler.set_epoch(epoch)
            self.sampler.set_start(offset * self.accum * cfg.loader.batch_size)
            n_updates = min(per_epoch - offset, length.total - self.step)
            bar = self._progress(n_updates, f'epoch {epoch + 1}' + (f'/{t.epochs}' if length.epoch_based else ''))
            it = iter(self.train_loader)
            for _ in range(n_updates):
                grad_norm = self._update(it, period_sums, counts)
                self.step += 1
                if self.ema is not None:
                    self.ema.update(unwrapped, step=self.step if cfg.ema.warmup else None)
                self.scheduler.step_update(self.step)
                bar.update()
                if self.step % t.log_interval == 0 or self.step == length.total:
                    lr = self.optimizer.param_groups[0]['lr']
                    loss = float(period_sums['loss']) / max(period_sums['n'], 1)
                    if not math.isfinite(loss):
                        raise TrainingError(f'training loss is {loss} at update {self.step}: the run diverged '
                                                 f'(lower optim.lr, set optim.clip_grad, or check the data)')
                    bar.set_postfix(loss=f'{loss:.4f}', lr=f'{lr:.3g}')
                    self.metrics.scalar('train/loss', loss, self.step)
                    self.metrics.scalar('train/lr', lr, self.step)
                    self._log_progress(not bar.disable, 'update %d/%d (epoch %d): loss %.4f, lr %.3g%s', self.step,
                                       length.total, epoch + 1, loss, lr,
                                       f', grad norm {grad_norm:.3g}' if grad_norm else '')
                if not length.epoch_based and (self.step % t.eval_interval == 0 or self.step % cfg.ckpt.interval == 0
                                               or self.step == length.total):
                    self.epoch = self.step // per_epoch
                    self._end_period(period_sums, counts, period_start)
                    period_sums, counts, period_start = {}, {}, time.time()
                if hook is not None:
                    hook(self)
            bar.close()
            if length.epoch_based and self.step % per_epoch == 0:
                self.epoch = self.step // per_epoch
                self._end_period(period_sums, counts, period_start)
                period_sums, counts, period_start = {}, {}, time.time()
                if 'after_epoch' in self.hooks:
                    self.hooks['after_epoch'](self)
        return self._finish()

    def _log_progress(self, bar_shown: bool, msg: str, *args) -> None:
        """A per-interval line: to the log file always, to the console only when no progress bar shows it."""
        if not bar_shown:
            _logger.info(msg, *args)
        elif self.log_handler is not None and _logger.isEnabledFor(logging.INFO):
            self.log_handler.handle(_logger.makeRecord(_logger.name, logging.INFO, __file__, 0, msg, args, None))

    def _update(self, it, period_sums: Dict[str, float], counts: Dict[str, float]) -> Optional[float]:
        """One optimiser update: ``accum`` micro-batches, backward, unscale / clip, step. Returns the gradient
        norm before clipping (if clipping)."""
        cfg = self.cfg
        model = self.model
        ddp = isinstance(model, DistributedDataParallel) or isinstance(getattr(model, '_orig_mod', None),
                                                                        DistributedDataParallel)
        for micro in range(self.accum):
            batch = next(it)
            sync = contextlib.nullcontext() if (not ddp or micro == self.accum - 1) else _ddp(model).no_sync()
            with sync:
                with self.autocast():
                    out = self.task.train_step(model, batch)
                self.scaler.scale(out.loss / self.accum).backward()
            # summed on the device: no host synchronisation per step (read at log intervals only)
            period_sums['loss'] = period_sums.get('loss', 0.) + out.loss.detach().float() * out.batch_size
            period_sums['n'] = period_sums.get('n', 0) + out.batch_size
            for k, v in out.logs.items():
                period_sums[k] = period_sums.get(k, 0.) + float(v) * out.batch_size
            for k, v in out.counts.items():
                counts[k] = counts.get(k, 0) + v
        grad_norm = None
        if cfg.optim.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(unwrap_model(model).parameters(), cfg.optim.clip_grad).item()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _end_period(self, sums: Dict[str, float], counts: Dict[str, float], start: float) -> None:
        """End of an epoch (or evaluation interval): reduce the training stats, evaluate, log, checkpoint.

        When the period ends with an evaluation, its training is checkpointed first (``last.pth`` with the
        period's record marked pending): an evaluation that fails (a missing package, out of memory, a kill)
        loses nothing, and ``--resume`` runs the evaluation before training on.
        """
        t, length = self.cfg.train, self.length
        self._sync_bn_stats()
        reduced = all_reduce_sum({**{f's_{k}': float(v) for k, v in sums.items()},
                                  **{f'c_{k}': v for k, v in counts.items()}},
                                 self.dist.device)
        n = max(reduced.get('s_n', 0.), 1.)
        record: Dict[str, Any] = {'epoch': self.epoch, 'step': self.step, 'epoch_based': length.epoch_based,
                                  'lr': self.optimizer.param_groups[0]['lr']}
        for k, v in reduced.items():
            if k.startswith('s_') and k != 's_n':
                record[f'train_{k[2:]}'] = v / n
            elif k.startswith('c_'):
                record[f'train_{k[2:]}'] = int(v)
        record['train_time_s'] = round(time.time() - start, 3)
        unit = self.epoch if length.epoch_based else self.step
        evaluate = self.val_loader is not None and (unit % t.eval_interval == 0 or self.step == length.total)
        if evaluate:
            self._save(None, None, False, pending=record)
        self._complete_period(record, evaluate)

    def _complete_period(self, record: Dict[str, Any], evaluate: bool) -> None:
        """Evaluate (if due), update the best, log the period's record, write the checkpoints."""
        cfg, length = self.cfg, self.length
        unit = self.epoch if length.epoch_based else self.step
        metrics: Dict[str, float] = {}
        if evaluate:
            t0 = time.time()
            metrics = self.evaluate()
            record.update(metrics)
            record['eval_time_s'] = round(time.time() - t0, 3)
        is_best = False
        primary = self._primary(metrics)
        if primary is not None and cfg.ckpt.save_best:
            better = self.best is None or (primary > self.best['value'] if self.task.higher_is_better
                                           else primary < self.best['value'])
            if better:
                self.best = {'metric': self.task.primary_metric, 'value': primary, 'step': self.step,
                             'epoch': self.epoch}
                is_best = True
        skipped = record.get('train_skipped_images', 0) + int(metrics.get('val_skipped_images', 0))
        if skipped:
            _logger.warning('%d unreadable image(s) skipped this %s (train %d, val %d); see the warnings in the log',
                            skipped, 'epoch' if length.epoch_based else 'interval',
                            record.get('train_skipped_images', 0), int(metrics.get('val_skipped_images', 0)))
        _logger.info('%s %d: %s', 'epoch' if length.epoch_based else 'update', unit, _fmt(record))
        self.history.append(record)
        self.metrics.write(record)
        numbered = unit if unit % cfg.ckpt.interval == 0 or self.step == length.total else None
        self._save(metrics, numbered, is_best)

    def _sync_bn_stats(self) -> None:
        """Make BatchNorm running statistics (model and EMA) identical on every process."""
        if not self.dist.distributed:
            return
        from timm.utils import distribute_bn
        reduce = self.cfg.train.dist_bn == 'reduce'
        distribute_bn(unwrap_model(self.model), self.dist.world_size, reduce)
        if self.ema is not None and not self.cfg.ema.on_cpu:
            distribute_bn(self.ema.module, self.dist.world_size, reduce)

    def _finish(self) -> TrainResult:
        cfg = self.cfg
        if self.dist.is_main:
            if cfg.log.curves:
                try:
                    path = plot_curves(self.metrics.records(), self.out / 'curves.png', self.task.primary_metric)
                    if path:
                        _logger.info('curves: %s', path)
                except Exception as e:  # noqa: BLE001  (a plotting failure must not lose a finished run)
                    _logger.warning('could not draw the curves: %s', e)
            if self.best:
                _logger.info('best %s %.4f at epoch %d (update %d): %s', self.best['metric'], self.best['value'],
                             self.best['epoch'], self.best['step'], self.ckpt.best)
        self.metrics.close()
        return TrainResult(model=unwrap_model(self.model), ema=self.ema.module if self.ema is not None else None,
                           history=self.history, best=self.best, output_dir=self.out, step=self.step, epoch=self.epoch)

    def close(self) -> None:
        if self.log_handler is not None:
            logging.getLogger('gpvit').removeHandler(self.log_handler)
            self.log_handler.close()
        if self.lock is not None:
            self.lock.release()


def _ddp(model: nn.Module) -> DistributedDataParallel:
    """The DDP wrapper, under ``torch.compile``'s if compiled."""
    return getattr(model, '_orig_mod', model)


def _fmt(record: Dict[str, Any]) -> str:
    parts = []
    for k, v in record.items():
        if k in ('epoch', 'step', 'epoch_based'):
            continue
        parts.append(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}')
    return ', '.join(parts)


def train(cfg: Config, task: Type[Task], resume: Optional[str] = None, device: Optional[str] = None,
          hooks: Optional[Dict[str, Callable]] = None, override: Sequence[str] = ()) -> TrainResult:
    """Run a training configuration.

    Args:
        cfg: a validated :class:`Config` (see :func:`gpvit.tasks.load_config`).
        task: the :class:`~gpvit.engine.task.Task` subclass that supplies model, data, loss and metrics
            (:func:`gpvit.tasks.train` passes the config's).
        resume: ``'auto'`` (continue from ``output_dir/last.pth`` if it exists, else from the newest readable
            numbered checkpoint), a checkpoint path, or None. A resume whose config differs from the
            checkpoint's in a key that changes the result is refused (:mod:`gpvit.engine.resume`) ...
        override: ... unless the key (or its section) is listed here: the change then applies from the
            checkpoint's update on, and is recorded.
        device: ``'cuda'`` / ``'cpu'``; default CUDA if available.
        hooks: optional callbacks ``after_step(trainer)`` / ``after_epoch(trainer)`` (tests, custom logging).

    Under torchrun every process calls this; the process group is set up from the environment.
    """
    if cfg.task != task.name:
        raise ConfigError(f'task: the config is a {cfg.task!r} config, the task given is {task.name!r}')
    _check_tensorboard(cfg)
    _check_batch(cfg, int(os.environ.get('WORLD_SIZE', '1')))
    task.preflight(cfg)
    dist = init_distributed(device)
    trainer = _Trainer(cfg, task, resume, dist, hooks or {}, override)
    try:
        trainer.setup()
        return trainer.run()
    finally:
        trainer.close()

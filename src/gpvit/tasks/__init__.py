"""Tasks: what to train (model, data, loss, metrics), as opposed to how (the engine, :mod:`gpvit.engine`).

A task is a subclass of :class:`~gpvit.engine.task.Task` registered under a name with :func:`register_task`; a
config selects it with ``task: NAME`` and its ``data:`` section follows the task's ``data_config`` dataclass. This
package resolves that name and hands the engine the task class: :func:`load_config` / :func:`build_config` read
a config, :func:`train` and :func:`evaluate_checkpoint` run one. The built-in tasks are imported here, plainly:
one that cannot be imported fails loudly.

Layer: above the engine, the data and the models; below the tools and the command line.
"""
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Type, Union

from ..checkpoint import Checkpoint, read_checkpoint_file
from ..engine import config as _config
from ..engine.task import StepOutput, Task
from ..errors import ConfigError
from . import classification, detection, segmentation  # noqa: F401  (the built-in tasks register themselves)
from .registry import get_task, list_tasks, register_task

__all__ = ['Task', 'StepOutput', 'register_task', 'get_task', 'list_tasks', 'build_config', 'load_config', 'train',
           'evaluate_checkpoint', 'load_model']

def _task_of(raw: Mapping[str, Any]) -> Type[Task]:
    name = raw.get('task', 'classification')
    if not isinstance(name, str):
        raise ConfigError(f'task: expected a task name, got {name!r}')
    return get_task(name)


def build_config(raw: Mapping[str, Any]) -> _config.Config:
    """Build and validate a :class:`~gpvit.engine.config.Config` from a raw dict (its task gives the ``data``
    schema)."""
    return _config.build_config(raw, _task_of(raw or {}))


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> _config.Config:
    """Load a YAML config file or packaged recipe by name (or the defaults if ``path`` is None), apply
    ``KEY=VALUE`` overrides, validate; see :func:`gpvit.engine.config.read_raw_config`."""
    raw = _config.read_raw_config(path, overrides)
    return _config.build_config(raw, _task_of(raw))


def train(cfg: _config.Config, resume: Optional[str] = None, device: Optional[str] = None, hooks=None,
          override: Sequence[str] = ()):
    """:func:`gpvit.engine.train` with the config's task."""
    from ..engine.trainer import train as _train
    return _train(cfg, get_task(cfg.task), resume=resume, device=device, hooks=hooks, override=override)


def load_model(cfg: _config.Config, checkpoint: Union[str, os.PathLike, Checkpoint], use_ema: bool = False,
               check_task: bool = True):
    """``(task instance on the CPU, model)``: the model a checkpoint holds, for ``cfg``'s task (the file read once).

    Raises:
        ConfigError: the checkpoint was trained for another task than ``cfg``'s.
    """
    import torch

    from ..engine.distributed import DistContext
    ckpt = read_checkpoint_file(checkpoint, use_ema=use_ema)
    trained_for = ckpt.meta.get('task')
    if check_task and isinstance(trained_for, str) and trained_for != cfg.task:
        raise ConfigError(f'task: the checkpoint {checkpoint} was trained for {trained_for!r}, the config is a '
                          f'{cfg.task!r} config; use a {trained_for} config with it')
    task = get_task(cfg.task)(cfg, DistContext(device=torch.device("cpu")))
    return task, task.model_from_checkpoint(ckpt, use_ema)


def evaluate_checkpoint(cfg: _config.Config, checkpoint, use_ema: bool = False, device: Optional[str] = None,
                        crop_pct: Optional[float] = None) -> Dict[str, float]:
    """Metrics of ``checkpoint`` (any format the task's model reads) on ``cfg``'s validation split, with the
    test transforms; distributed under torchrun (:func:`gpvit.engine.evaluate`)."""
    from ..engine.evaluator import evaluate
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f'--checkpoint: no file at {checkpoint}')
    task_cls = get_task(cfg.task)
    task_cls.preflight(cfg, splits=('val',))
    _, model = load_model(cfg, checkpoint, use_ema)
    return evaluate(cfg, task_cls, model, device=device, crop_pct=crop_pct)


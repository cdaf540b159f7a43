"""The interface between the engine and a task: what the engine drives (:class:`Task`) and what a step returns.

A task (:mod:`gpvit.tasks`) says *what* to train — model, data, loss, metrics; the engine owns *how* —
distributed setup, samplers and loaders, the optimiser and its parameter groups, the lr schedule, mixed
precision, gradient accumulation and clipping, EMA, checkpoints and resume, logging. The engine is handed a
:class:`Task` subclass (``train(cfg, task)``) and never looks tasks up by name.
"""
import abc
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.data import Dataset

__all__ = ['Task', 'StepOutput']


@dataclass
class StepOutput:
    """What :meth:`Task.train_step` returns for one micro-batch.

    Attributes:
        loss: the scalar to back-propagate (the engine divides it by the accumulation steps).
        batch_size: samples in the micro-batch (for averaging).
        logs: scalars averaged over the epoch and logged (``loss`` is logged anyway).
        counts: integers summed over the epoch and over all processes (e.g. ``skipped_images``).
    """
    loss: torch.Tensor
    batch_size: int
    logs: Dict[str, float] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)


class Task(abc.ABC):
    """The interface the engine drives.

    Class attributes:
        name: the ``task:`` value of configs.
        data_config: the dataclass of the config's ``data`` section.
        primary_metric: the key of :meth:`evaluate`'s result that selects the best checkpoint.
        higher_is_better: direction of the primary metric.
        requires: ``{module: extra}``: the optional packages the task needs and the ``gpvit[extra]`` that
            installs them; a missing one is a config error before any work (:meth:`missing_requirements`).

    Lifecycle (engine side): ``task = Task(cfg, dist)``; ``build_datasets()``; ``build_model()``; the engine
    wraps the model (device, DDP, EMA), builds samplers and loaders with :meth:`collate_fn`, then calls
    :meth:`train_step` on every micro-batch under autocast, and :meth:`evaluate` (model in eval mode, no grad)
    on the ``val`` loader. :meth:`model_spec` is saved in checkpoints so that ``gpvit eval`` and
    ``gpvit.create_model(name, checkpoint=...)`` can rebuild the model.
    """
    name: ClassVar[str]
    data_config: ClassVar[type]
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    requires: ClassVar[Dict[str, str]] = {}

    @classmethod
    def missing_requirements(cls) -> List[str]:
        """One line per optional package of :attr:`requires` that is not installed (nothing is imported)."""
        return [f'{module} (pip install "gpvit[{extra}]")' for module, extra in cls.requires.items()
                if importlib.util.find_spec(module) is None]

    def __init__(self, cfg: Any, dist: Any):
        """
        Args:
            cfg: the whole :class:`gpvit.engine.config.Config` (its ``data`` section is ``data_config``).
            dist: the :class:`gpvit.engine.distributed.DistContext` (device, rank, world size).
        """
        self.cfg = cfg
        self.dist = dist

    @classmethod
    def preflight(cls, cfg: Any, splits=('train', 'val')) -> None:
        """Cheap checks of the config against the file system (paths exist), run before any work starts;
        raise :class:`gpvit.engine.config.ConfigError` naming the key."""

    @abc.abstractmethod
    def build_datasets(self, splits=('train', 'val')) -> Dict[str, Dataset]:
        """Map-style datasets by split name. Called before :meth:`build_model` (it may set num_classes)."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The network, on the CPU, with its initial (or pretrained) weights."""

    def model_spec(self) -> Dict[str, Any]:
        """``{'name': ..., 'kwargs': {...}}`` to rebuild the model with ``gpvit.create_model``; saved in checkpoints."""
        return {'name': self.cfg.model.name, 'kwargs': dict(self.cfg.model.kwargs)}

    def collate_fn(self, split: str) -> Optional[Callable[[List[Any]], Any]]:
        """The DataLoader collate function of a split (None: PyTorch's default)."""
        return None

    def train_begin(self, model: nn.Module) -> None:
        """Called once before the first step (e.g. to build batch augmentation)."""

    @abc.abstractmethod
    def train_step(self, model: nn.Module, batch: Any) -> StepOutput:
        """Forward one micro-batch (already the loader's output; move it to ``self.dist.device``) and return
        the loss. Runs under the engine's autocast; the engine does backward and the optimiser step."""

    @abc.abstractmethod
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any) -> Dict[str, float]:
        """Metrics of ``model`` on a loader holding this process's shard, reduced over all processes (every
        rank returns the same dict). Must contain :attr:`primary_metric`."""

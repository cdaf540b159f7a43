"""The training engine shared by every task: config, distributed setup, loop, checkpoints, logs.

``train(cfg, task)`` runs a configuration for a :class:`~gpvit.engine.task.Task` subclass; :mod:`gpvit.tasks`
supplies the tasks and resolves a config's ``task:`` name (``gpvit.tasks.train(gpvit.tasks.load_config(...))``
is what ``gpvit train`` runs).

Layer: above :mod:`gpvit.checkpoint` and :mod:`gpvit.errors`; knows nothing of models, tasks, tools or the CLI.
"""
from .config import Config, ConfigError, build_config, dump_config, read_raw_config
from .evaluator import evaluate
from .task import StepOutput, Task
from .trainer import TrainResult, train

__all__ = ['Config', 'ConfigError', 'build_config', 'dump_config', 'read_raw_config', 'evaluate', 'StepOutput',
           'Task', 'TrainResult', 'train']

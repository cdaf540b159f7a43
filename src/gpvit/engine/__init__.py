"""The training engine shared by every task: config, distributed setup, loop, checkpoints, logs.

``train(load_config('configs/classification/gpvit_l1_in1k.yaml', ['data.root=/data/imagenet']))`` is what
``gpvit train`` runs; tasks (:mod:`gpvit.tasks`) supply the model, data, loss and metrics.
"""
from .config import Config, ConfigError, build_config, dump_config, load_config
from .evaluator import evaluate_checkpoint
from .trainer import TrainResult, train

__all__ = ['Config', 'ConfigError', 'build_config', 'dump_config', 'load_config', 'evaluate_checkpoint',
           'TrainResult', 'train']

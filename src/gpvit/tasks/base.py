"""What every built-in task shares on top of the engine's :class:`~gpvit.engine.task.Task`: the model by name
(:func:`gpvit.create_model`), checked before any work, and rebuilt from a checkpoint of this project."""
from typing import Any, ClassVar, Dict, Tuple

import torch.nn as nn

from ..checkpoint import Checkpoint
from ..engine.task import Task
from ..errors import ConfigError
from ..factory import create_model, list_dense_models, list_models

__all__ = ['ModelTask']


class ModelTask(Task):
    """A task whose model is a registered model of this project.

    Class attributes:
        model_names: the model names the task accepts (empty: every classifier of :func:`gpvit.list_models`).
    """
    model_names: ClassVar[Tuple[str, ...]] = ()

    @classmethod
    def preflight(cls, cfg: Any, splits=('train', 'val')) -> None:
        """``model.name`` is one this task can build (before any data or model is loaded)."""
        name = cfg.model.name
        allowed = cls.model_names or tuple(list_models())
        if name not in allowed:
            if name in list_dense_models() or (cls.model_names and name in list_models()):
                raise ConfigError(f'model.name: {name!r} is not a {cls.name} model; a {cls.name} config takes '
                                  f'one of {", ".join(allowed[:12])}{", ..." if len(allowed) > 12 else ""}')
            raise ConfigError(f'model.name: unknown model {name!r}; this project has: {", ".join(allowed)}')

    def model_from_checkpoint(self, checkpoint: Checkpoint, use_ema: bool = False) -> nn.Module:
        """The model ``checkpoint`` holds, with its weights: the one a training checkpoint of this project
        records (its ``model_spec``), else the config's (:meth:`model_spec`)."""
        spec: Dict[str, Any] = checkpoint.model_spec or self.model_spec()
        return create_model(spec['name'], checkpoint=checkpoint, use_ema=use_ema, **dict(spec['kwargs']))

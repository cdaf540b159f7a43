"""What every built-in task shares on top of the engine's :class:`~gpvit.engine.task.Task`: the model by name
(:func:`gpvit.create_model`), checked before any work, and rebuilt from a checkpoint of this project."""
import difflib
import inspect
import re
from typing import Any, ClassVar, Dict, List, Tuple

import torch.nn as nn

from ..checkpoint import Checkpoint
from ..engine.task import Task
from ..errors import ConfigError
from ..dense import DENSE_MODELS
from ..factory import create_model, list_dense_models, list_models
from ..models import GCViT, GPViT

__all__ = ['ModelTask']


def _known_kwargs(name: str, kwargs: Dict[str, Any]) -> List[str]:
    """The constructor arguments of model ``name`` (a dense model's and its backbone's)."""
    def params(fn) -> List[str]:
        return [p for p in inspect.signature(fn).parameters if p not in ('self', 'kwargs')]
    family = {'gpvit_': GPViT, 'gc_vit_': GCViT}
    names = []
    if name in DENSE_MODELS:
        names += params(DENSE_MODELS[name])
        name = str(kwargs.get('backbone', 'gpvit_'))
    for prefix, cls in family.items():
        if name.startswith(prefix):
            names += params(cls.__init__)
    return names


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

    @staticmethod
    def create_model(name: str, **kwargs: Any) -> nn.Module:
        """:func:`gpvit.create_model`, with an argument the model does not take (a typo in ``model.kwargs``)
        reported as a :class:`ConfigError` naming it and the closest argument it does take."""
        try:
            return create_model(name, **kwargs)
        except TypeError as e:
            m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if m is None:
                raise
            close = difflib.get_close_matches(m[1], _known_kwargs(name, kwargs), n=1)
            raise ConfigError(f'model.kwargs.{m[1]}: {name} takes no argument {m[1]!r}'
                              + (f' (did you mean model.kwargs.{close[0]}?)' if close else '')) from None

    def model_from_checkpoint(self, checkpoint: Checkpoint, use_ema: bool = False) -> nn.Module:
        """The model ``checkpoint`` holds, with its weights: the one a training checkpoint of this project
        records (its ``model_spec``), else the config's (:meth:`model_spec`)."""
        spec: Dict[str, Any] = checkpoint.model_spec or self.model_spec()
        return self.create_model(spec['name'], checkpoint=checkpoint, use_ema=use_ema, **dict(spec['kwargs']))

"""The task registry: ``task: NAME`` in a config -> the :class:`~gpvit.engine.task.Task` subclass."""
import dataclasses
from typing import Dict, List, Type

from ..engine.task import Task
from ..errors import ConfigError

__all__ = ['register_task', 'get_task', 'list_tasks']

_TASKS: Dict[str, Type[Task]] = {}


def register_task(cls: Type[Task]) -> Type[Task]:
    """Class decorator: make ``task: cls.name`` usable in configs."""
    if not dataclasses.is_dataclass(cls.data_config):
        raise TypeError(f'{cls.__name__}.data_config must be a dataclass')
    _TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> Type[Task]:
    """The task class registered as ``name``."""
    if name not in _TASKS:
        raise ConfigError(f'task: unknown task {name!r}; known: {", ".join(sorted(_TASKS))}')
    return _TASKS[name]


def list_tasks() -> List[str]:
    return sorted(_TASKS)



"""Typed, validated run configurations: dataclasses loaded from YAML plus command-line overrides.

A run is described by one :class:`Config`: generic sections the engine reads (``model``, ``loader``,
``optim``, ``sched``, ``train``, ``ema``, ``ckpt``, ``log``) and a ``data`` section whose schema belongs to
the task named by ``task`` (see :mod:`gpvit.tasks`). Values come from a YAML file, then from overrides
``a.b=value`` (the value is read as YAML: ``1e-3``, ``true``, ``null``, ``[0.08, 1.0]``).

Every key is checked before any work starts: an unknown key, a value of the wrong type or out of range
raises :class:`ConfigError` naming the dotted key (``optim.lr: must be > 0, got -1.0``).
"""
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import yaml

from ..errors import ConfigError
from .recipes import resolve_config

__all__ = ['ConfigError', 'Config', 'ModelConfig', 'LoaderConfig', 'OptimConfig', 'SchedConfig', 'TrainConfig',
           'EmaConfig', 'CkptConfig', 'LogConfig', 'read_raw_config', 'build_config', 'apply_overrides', 'to_dict',
           'checked', 'dump_config']


def checked(default: Any = dataclasses.MISSING, check: Optional[Callable[[Any], bool]] = None, rule: str = '',
            default_factory: Any = dataclasses.MISSING, doc: str = '') -> Any:
    """A dataclass field with a value check (``check(value)`` must be true; ``rule`` says what it requires)."""
    meta = {'check': check, 'rule': rule, 'doc': doc}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _positive(v) -> bool:
    return v is None or v > 0


def _non_negative(v) -> bool:
    return v is None or v >= 0


def _unit(v) -> bool:
    return v is None or 0 <= v <= 1


# ---------------------------------------------------------------------------------------------------------------
# Generic sections
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    """The network: a registered model name and its constructor arguments."""
    name: str = 'gpvit_l1'
    kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to gpvit.create_model (drop_path_rate, img_size, ...)
    pretrained: Optional[str] = None  # initial weights: a checkpoint of any supported format (fine-tuning)
    pretrained_use_ema: bool = False
    grad_checkpointing: bool = False
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    channels_last: bool = False


@dataclass
class LoaderConfig:
    """Data loading, per process (per GPU)."""
    batch_size: int = checked(128, _positive, '> 0')
    eval_batch_size: Optional[int] = checked(None, _positive, '> 0 or null (= batch_size)')
    workers: int = checked(8, _non_negative, '>= 0')
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = checked(2, _positive, '> 0')


@dataclass
class OptimConfig:
    """Optimiser and its parameter groups."""
    name: str = 'adamw'  # any timm.optim.create_optimizer_v2 name
    lr: float = checked(1e-3, _positive, '> 0')
    # Linear scaling rule: if set, the lr used is lr * global_batch / lr_scale_batch.
    lr_scale_batch: Optional[int] = checked(None, _positive, '> 0 or null')
    weight_decay: float = checked(0.05, _non_negative, '>= 0')
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = checked(1e-8, _positive, '> 0')
    momentum: float = checked(0.9, _non_negative, '>= 0')
    # No weight decay for 1-D parameters (biases, norms, layer scales) and these name patterns (substrings) ...
    no_decay_keys: List[str] = field(default_factory=list)
    # ... and the names the model's no_weight_decay() lists.
    no_decay_from_model: bool = True
    # lr multipliers by name substring, e.g. {head: 10.0}; the first matching pattern wins.
    lr_mult: Dict[str, float] = field(default_factory=dict)
    layer_decay: Optional[float] = checked(None, lambda v: v is None or 0 < v <= 1, 'in (0, 1] or null')
    clip_grad: Optional[float] = checked(None, _positive, '> 0 or null')  # max L2 norm of all gradients
    # torch's fused kernel (one pass over all parameters) for adam / adamw / sgd / momentum / nesterov, where the
    # parameters are on a CPU or CUDA device; other optimisers and devices take their default implementation.
    fused: bool = True


@dataclass
class SchedConfig:
    """Learning-rate schedule, stepped after every optimiser update."""
    name: Literal['cosine', 'poly', 'step', 'constant'] = 'cosine'
    # Warmup length, in epochs (epoch-based runs) or iterations; at most one of the two.
    warmup_epochs: Optional[float] = checked(None, _non_negative, '>= 0 or null')
    warmup_iters: Optional[int] = checked(None, _non_negative, '>= 0 or null')
    # Warmup start: warmup_lr (absolute), or warmup_ratio * lr.
    warmup_lr: Optional[float] = checked(None, _non_negative, '>= 0 or null')
    warmup_ratio: Optional[float] = checked(None, _unit, 'in [0, 1] or null')
    # 'linear': timm's ramp from the start value to lr, then the schedule; 'scaled': mmcv's, the schedule's own
    # value times a factor rising linearly from warmup_ratio to 1.
    warmup_mode: Literal['linear', 'scaled'] = 'linear'
    # Final lr: min_lr (absolute) or min_lr_ratio * lr; default 0.
    min_lr: Optional[float] = checked(None, _non_negative, '>= 0 or null')
    min_lr_ratio: Optional[float] = checked(None, _unit, 'in [0, 1] or null')
    # Epochs (or iterations) at min_lr after the decay; they are part of train.epochs / train.iters.
    cooldown_epochs: int = checked(0, _non_negative, '>= 0')
    power: float = checked(1.0, _positive, '> 0')  # poly
    milestones: List[float] = field(default_factory=list)  # step: in the run's unit (epochs or iterations)
    gamma: float = checked(0.1, _positive, '> 0')  # step: lr factor at each milestone


@dataclass
class TrainConfig:
    """Length, batch arithmetic, precision, evaluation cadence."""
    epochs: Optional[int] = checked(None, _positive, '> 0 or null')  # epoch-based run ...
    iters: Optional[int] = checked(None, _positive, '> 0 or null')  # ... or iteration-based: exactly one
    # Reproduce a recipe's global batch with any number of processes: accum_steps is derived as
    # global_batch / (loader.batch_size * world_size). Leave null to use accum_steps as given.
    global_batch: Optional[int] = checked(None, _positive, '> 0 or null')
    accum_steps: int = checked(1, _positive, '> 0')
    amp: Literal['none', 'bf16', 'fp16'] = 'none'  # fp16 trains with a GradScaler (dynamic loss scaling)
    # Autocast on a CPU too: bf16 (fast where the CPU has AVX512-BF16/AMX), or fp16 with a CPU GradScaler (slow:
    # for testing an fp16 recipe without a GPU). Off: bf16 runs in fp32 on a CPU, and fp16 is refused there.
    amp_on_cpu: bool = False
    # Under DDP each process updates its own BatchNorm statistics; before every evaluation and checkpoint they
    # are averaged over the processes ('reduce', timm) or copied from rank 0 ('broadcast', mmcv), also in the EMA.
    dist_bn: Literal['reduce', 'broadcast'] = 'reduce'
    find_unused_parameters: bool = False  # DDP: for models whose forward leaves parameters unused (some detectors)
    eval_interval: int = checked(1, _positive, '> 0')  # in the run's unit
    eval_at_start: bool = False
    log_interval: int = checked(50, _positive, '> 0')  # iterations between log lines
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms; cuDNN deterministic
    compile: bool = False  # torch.compile the model
    threads: Optional[int] = checked(None, _positive, '> 0 or null')  # torch.set_num_threads per process
    # CPU training and evaluation runs: glibc's malloc keeps freed activations for reuse instead of unmapping them
    # (each step's tens of MB would come back as fresh pages the kernel faults in and zeroes), as jemalloc/tcmalloc
    # do; false: glibc's default
    keep_freed_memory: bool = True


@dataclass
class EmaConfig:
    """Exponential moving average of the weights (timm ModelEmaV3), updated after every optimiser step."""
    enabled: bool = False
    decay: float = checked(0.9998, lambda v: 0 < v < 1, 'in (0, 1)')
    warmup: bool = False  # timm's decay warmup
    eval: bool = True  # evaluate the EMA too; the best checkpoint follows the EMA's primary metric
    on_cpu: bool = False  # keep the EMA on the CPU (saves GPU memory; the EMA is then not evaluated)


@dataclass
class CkptConfig:
    """Checkpoints in ``output_dir``: ``last.pth`` always, ``checkpoint-N.pth`` every interval, ``best.pth``."""
    interval: int = checked(1, _positive, '> 0')  # in the run's unit (epochs or iterations)
    keep_last: int = checked(3, _non_negative, '>= 0')  # numbered checkpoints kept (0: none)
    save_best: bool = True


@dataclass
class LogConfig:
    """Outputs besides checkpoints: metrics.jsonl and train.log always."""
    progress: bool = True  # a progress bar on the terminal (rank 0, only on a TTY)
    tensorboard: bool = False  # needs the tensorboard package (pip install gpvit[tensorboard])
    curves: bool = True  # curves.png at the end of the run


@dataclass
class Config:
    """A whole run."""
    task: str = 'classification'
    dataset: str = ''  # what the recipe is for (ImageNet-1k, COCO 2017, ADE20K): shown by `gpvit configs`, nothing else
    output_dir: str = 'runs/default'
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = None  # the task's schema (e.g. gpvit.tasks.classification.ClassificationDataConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        """Checks across keys."""
        t, s = self.train, self.sched
        if (t.epochs is None) == (t.iters is None):
            raise ConfigError('train.epochs / train.iters: set exactly one of them (epoch- or iteration-based run)')
        if s.warmup_epochs is not None and s.warmup_iters is not None:
            raise ConfigError('sched.warmup_epochs / sched.warmup_iters: set at most one')
        if s.warmup_epochs is not None and t.epochs is None:
            raise ConfigError('sched.warmup_epochs: an iteration-based run (train.iters) takes sched.warmup_iters')
        if s.warmup_lr is not None and s.warmup_ratio is not None:
            raise ConfigError('sched.warmup_lr / sched.warmup_ratio: set at most one')
        if s.min_lr is not None and s.min_lr_ratio is not None:
            raise ConfigError('sched.min_lr / sched.min_lr_ratio: set at most one')
        if s.warmup_mode == 'scaled' and s.warmup_lr is not None:
            raise ConfigError("sched.warmup_lr: warmup_mode 'scaled' takes sched.warmup_ratio")
        if s.name == 'step' and not s.milestones:
            raise ConfigError("sched.milestones: the 'step' schedule needs at least one milestone")
        if sorted(s.milestones) != list(s.milestones):
            raise ConfigError(f'sched.milestones: must be increasing, got {s.milestones}')
        length = t.epochs if t.epochs is not None else t.iters
        if s.cooldown_epochs >= length:
            raise ConfigError(f'sched.cooldown_epochs: must be shorter than the run ({length}), got {s.cooldown_epochs}')
        if t.global_batch is not None and t.accum_steps != 1:
            raise ConfigError('train.accum_steps: derived from train.global_batch; set one of the two '
                              '(train.global_batch=null to give accum_steps)')
        if len(self.optim.betas) != 2:
            raise ConfigError(f'optim.betas: two values, got {self.optim.betas}')
        if self.ema.enabled and self.ema.on_cpu and self.ema.eval:
            raise ConfigError('ema.eval: an EMA kept on the CPU (ema.on_cpu) is not evaluated; set ema.eval=false')
        if not self.model.name:
            raise ConfigError('model.name: must be a registered model name')
        if hasattr(self.data, 'validate'):
            self.data.validate(self)


# ---------------------------------------------------------------------------------------------------------------
# Conversion from plain dicts, with errors naming the key
# ---------------------------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return 'one of ' + ', '.join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = ' or '.join(_type_name(a) for a in args)
        return inner + (' or null' if len(args) < len(typing.get_args(tp)) else '')
    if origin in (list, List, Sequence):
        return f'a list of {_type_name(typing.get_args(tp)[0])}'
    if origin in (tuple, Tuple):
        return 'a list [' + ', '.join(_type_name(a) for a in typing.get_args(tp)) + ']'
    if origin in (dict, Dict, Mapping):
        return 'a mapping'
    if dataclasses.is_dataclass(tp):
        return 'a mapping (section)'
    return getattr(tp, '__name__', str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (lists to tuples, ints to floats)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    bad = ConfigError(f'{key}: expected {_type_name(tp)}, got {value!r}')
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
        raise ConfigError(f'{key}: expected {_type_name(tp)}, got {value!r}'
                          + (f' (did you mean {close[0]!r}?)' if close else ''))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise bad
        return build_section(tp, value, key)
    if origin in (list, List, Sequence):
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f'{key}[{i}]') for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f'{key}[{i}]') for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f'{key}: expected {_type_name(tp)} ({len(args)} values), got {value!r}')
        return tuple(_convert(v, a, f'{key}[{i}]') for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Dict, Mapping):
        if not isinstance(value, Mapping):
            raise bad
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        return {_convert(k, k_tp, key): _convert(v, v_tp, f'{key}.{k}') for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f'{key}: must be finite, got {value!r}')
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 without a dot as a string
            try:
                return _convert(float(value), float, key)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def build_section(cls: type, values: Mapping, prefix: str = '') -> Any:
    """Build dataclass ``cls`` from a mapping: unknown keys, wrong types and failed checks raise ConfigError."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for k in values:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            raise ConfigError(f'{prefix}{"." if prefix else ""}{k}: unknown key'
                              + (f' (did you mean {prefix + "." if prefix else ""}{close[0]}?)' if close else '')
                              + f'; {prefix or "the top level"} has: {", ".join(fields)}')
    kwargs = {}
    for name, f in fields.items():
        if name not in values:
            continue
        key = f'{prefix}.{name}' if prefix else name
        value = _convert(values[name], hints[name], key)
        check = f.metadata.get('check')
        if check is not None and not check(value):
            raise ConfigError(f'{key}: must be {f.metadata.get("rule")}, got {value!r}')
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A config (or any nested dataclass) as plain YAML-able data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; read it as the float everyone means."""


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$''', re.X),
    list('-+0123456789.'))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _parse_value(text: str) -> Any:
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``a.b=value`` overrides to a raw config dict (in place; returned). Values are parsed as YAML."""
    for item in overrides:
        if '=' not in item:
            raise ConfigError(f'override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3')
        key, text = item.split('=', 1)
        key = key.strip()
        if not key or any(not p for p in key.split('.')):
            raise ConfigError(f'override {item!r}: malformed key {key!r}')
        node = raw
        parts = key.split('.')
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f'{".".join(parts[:i + 1])}: is a value ({child!r}), not a section; cannot set {key}')
            node = child
        node[parts[-1]] = _parse_value(text)
    return raw


def build_config(raw: Mapping[str, Any], task: type) -> Config:
    """Build and validate a :class:`Config` from a raw dict.

    Args:
        raw: the config as plain data (YAML), overrides applied.
        task: the :class:`~gpvit.engine.task.Task` subclass the config's ``task:`` names (:func:`gpvit.tasks.get_task`);
            its ``data_config`` is the ``data`` section's schema, its ``requires`` the optional packages it needs.
    """
    raw = dict(raw or {})
    missing = task.missing_requirements()
    if missing:
        raise ConfigError(f'task: {task.name} needs packages that are not installed: {", ".join(missing)}')
    data = raw.pop('data', None) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f'data: expected a mapping (section), got {data!r}')
    cfg = build_section(Config, raw)
    if cfg.task != task.name:
        raise ConfigError(f'task: the config says {cfg.task!r}, built as {task.name!r}')
    cfg.data = build_section(task.data_config, data, 'data')
    cfg.validate()
    return cfg


def read_raw_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """A YAML config as plain data (``{}`` for the defaults if ``path`` is None), with ``KEY=VALUE`` overrides.

    ``path`` is a file, or the name of a packaged recipe (``gpvit_l1_in1k``; see
    :func:`gpvit.engine.recipes.resolve_config`). :func:`gpvit.tasks.load_config` reads and builds in one call.
    """
    raw: Dict[str, Any] = {}
    if path is not None:
        try:
            path = resolve_config(path)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None
        try:
            raw = yaml_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f'{path}: not valid YAML: {e}') from e
        if not isinstance(raw, dict):
            raise ConfigError(f'{path}: the top level must be a mapping of sections, got {type(raw).__name__}')
    return apply_overrides(raw, overrides)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)

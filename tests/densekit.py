"""Helpers of the detection and segmentation tests: the tiny iteration-based run around a task's model and data
sections, training it and re-evaluating the checkpoint, the kill-and-resume check and ``gpvit predict``."""
import json
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch
import yaml

from gpvit.cli import main as cli_main
from gpvit.engine.config import ConfigError, apply_overrides
from gpvit.tasks import build_config, evaluate_checkpoint, train

from trainkit import state_equal

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
#: GPViT L1-L4 embedding widths (the reference layouts of other levels are built from them).
GPVIT_WIDTH = {1: 216, 2: 348, 3: 432, 4: 624}


def close_to_reference(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """The golden files' tolerance (tests/data/golden/dense/README.md): max abs error <= 1e-4 x max(1, max |ref|)."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return (ours - theirs).abs().max().item() <= 1e-4 * max(1.0, theirs.abs().max().item())


def dense_raw(task: str, out: Path, model: str, kwargs: Dict, data: Dict, optim: Dict, sched: Dict) -> Dict:
    """A raw config of 4 iterations of batch 2, evaluated and checkpointed every 2, on one thread."""
    return {
        'task': task,
        'output_dir': str(out),
        'model': {'name': model, 'kwargs': kwargs},
        'data': data,
        'loader': {'batch_size': 2, 'workers': 0, 'persistent_workers': False},
        'optim': optim,
        'sched': sched,
        'train': {'iters': 4, 'eval_interval': 2, 'log_interval': 1, 'seed': 0, 'threads': 1},
        'ckpt': {'interval': 2, 'keep_last': 2},
        'log': {'progress': False, 'curves': False},
    }


def check_config_errors(raw_for: Callable[[], Dict], errors: Dict[str, str]) -> None:
    """Each ``KEY=VALUE`` override of ``errors``, applied alone to a fresh ``raw_for()``, makes the config fail with
    a :class:`ConfigError` matching its pattern."""
    for override, match in errors.items():
        raw = apply_overrides(raw_for(), [override])
        with pytest.raises(ConfigError, match=match):
            build_config(raw)


def train_and_reevaluate(cfg, metric: str) -> List[Dict]:
    """Train a :func:`dense_raw` run; its records are at steps 2 and 4, and evaluating ``last.pth`` as ``gpvit eval``
    does gives the last logged ``val_<metric>``. Returns the records of ``metrics.jsonl``."""
    out = Path(cfg.output_dir)
    assert train(cfg).step == 4
    recs = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in recs] == [2, 4]
    metrics = evaluate_checkpoint(cfg, out / 'last.pth', device='cpu')
    assert metrics[metric] == pytest.approx(recs[-1][f'val_{metric}'])
    return recs


class Killed(Exception):
    pass


def _kill_after_step_3(trainer) -> None:
    if trainer.step == 3:
        raise Killed


def check_resume_is_bit_exact(raw_for: Callable[[Path], Dict], tmp_path: Path) -> None:
    """A :func:`dense_raw` run (``raw_for(output_dir)``) killed after update 3, its last checkpoint at update 2, and
    resumed ends with the same weights, bit for bit, as an uninterrupted one."""
    ref, run = tmp_path / 'ref', tmp_path / 'run'
    train(build_config(raw_for(ref)))
    with pytest.raises(Killed):
        train(build_config(raw_for(run)), hooks={'after_step': _kill_after_step_3})
    assert torch.load(run / 'last.pth', map_location='cpu', weights_only=True)['step'] == 2
    train(build_config(raw_for(run)), resume='auto')
    a = torch.load(ref / 'last.pth', map_location='cpu', weights_only=True)
    b = torch.load(run / 'last.pth', map_location='cpu', weights_only=True)
    assert a['step'] == b['step'] == 4
    assert state_equal(a['model'], b['model']) is None


def trained_predictor(raw: Dict, cfg_path: Path) -> Callable[..., int]:
    """Train ``raw`` for 2 iterations and save it as ``cfg_path``; returns ``predict(image, png, *options,
    checkpoint=None)``, the exit status of ``gpvit predict`` on the CPU (default checkpoint: the run's last)."""
    raw['train'].update(iters=2, eval_interval=2)
    cfg_path.write_text(yaml.safe_dump(raw))
    train(build_config(raw))
    last = Path(raw['output_dir']) / 'last.pth'

    def predict(image: Path, png: Path, *options: str, checkpoint: Path = None) -> int:
        return cli_main(['predict', '--config', str(cfg_path), '--checkpoint', str(checkpoint or last),
                         '--device', 'cpu', '--out', str(png), *options, str(image)])

    return predict

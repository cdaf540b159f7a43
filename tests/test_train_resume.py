"""Resume after an interruption gives bit-identical results to an uninterrupted run (CPU)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gpvit.tasks import train

from trainkit import make_image_folder, state_equal, tiny_config, tiny_raw

# Every source of randomness on: RandAugment, erasing, Mixup/CutMix, drop path; plus EMA, accumulation, clipping.
STRICT = dict(
    data={'train_aug': {'auto_augment': 'rand-m9-mstd0.5-inc1', 're_prob': 0.25},
          'mixup': {'mixup_alpha': 0.8, 'cutmix_alpha': 1.0}},
    loader={'batch_size': 4},
    train={'epochs': 3, 'accum_steps': 2},
    ema={'enabled': True, 'decay': 0.9},
    ckpt={'interval': 1, 'keep_last': 1},
)


class Killed(Exception):
    pass


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), classes=3, per_class=10, val_per_class=4)


def _kill_at(step):
    def hook(trainer):
        if trainer.step == step:
            raise Killed(f'killed after update {step}')
    return hook


def _records(out: Path):
    recs = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith('time_s')} for r in recs]


def _compare_runs(a: Path, b: Path):
    ca = torch.load(a / 'last.pth', map_location='cpu', weights_only=True)
    cb = torch.load(b / 'last.pth', map_location='cpu', weights_only=True)
    assert ca['step'] == cb['step']
    assert state_equal(ca['model'], cb['model']) is None
    assert state_equal(ca['model_ema'], cb['model_ema']) is None
    for sa, sb in zip(ca['optimizer']['state'].values(), cb['optimizer']['state'].values()):
        assert state_equal(sa, sb) is None
    assert ca['scheduler'] == cb['scheduler']
    assert _records(a) == _records(b)


def test_resume_mid_epoch_is_bit_exact(folder, tmp_path):
    ref = tmp_path / 'uninterrupted'
    train(tiny_config(folder['root'], ref, **STRICT))

    run = tmp_path / 'interrupted'
    # 8 micro-batches of 4 per epoch, 2 per update: 4 updates per epoch; killed in the middle of epoch 2
    with pytest.raises(Killed):
        train(tiny_config(folder['root'], run, **STRICT), hooks={'after_step': _kill_at(6)})
    assert torch.load(run / 'last.pth', weights_only=True)['step'] == 4
    assert len(_records(run)) == 1
    # resumed with two loader workers instead of none: the augmentation does not depend on them
    resumed = tiny_config(folder['root'], run, ['loader.workers=2'], **STRICT)
    result = train(resumed, resume='auto')
    assert result.step == 12
    _compare_runs(ref, run)


def test_iteration_based_resume_between_epochs_boundaries(folder, tmp_path):
    """Checkpoints every 3 updates of 4-update epochs: the resume point lies inside an epoch."""
    sections = dict(STRICT, train={'epochs': None, 'iters': 9, 'accum_steps': 2, 'eval_interval': 3},
                    ckpt={'interval': 3, 'keep_last': 1}, sched={'name': 'poly', 'warmup_iters': 2})
    ref = tmp_path / 'uninterrupted'
    train(tiny_config(folder['root'], ref, **sections))
    run = tmp_path / 'interrupted'
    with pytest.raises(Killed):
        train(tiny_config(folder['root'], run, **sections), hooks={'after_step': _kill_at(8)})
    assert torch.load(run / 'last.pth', weights_only=True)['step'] == 6  # epoch 2, update 2 of 4
    train(tiny_config(folder['root'], run, **sections), resume='auto')
    _compare_runs(ref, run)


def test_sigkill_at_any_moment_then_resume_auto(folder, tmp_path):
    """A real `gpvit train` process killed with SIGKILL right after its first checkpoint lands, resumed with
    `--resume auto`, ends with the uninterrupted run's weights."""
    sections = dict(STRICT, train={'epochs': 3, 'accum_steps': 2, 'threads': 1})
    ref = tmp_path / 'uninterrupted'
    train(tiny_config(folder['root'], ref, **sections))

    run = tmp_path / 'killed'
    cfg_file = tmp_path / 'cfg.yaml'
    cfg_file.write_text(yaml.safe_dump(tiny_raw(folder['root'], run, **sections)))
    cmd = [sys.executable, '-m', 'gpvit.cli', 'train', '--config', str(cfg_file), '--resume', 'auto']
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent)] + sys.path))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / 'last.pth').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / 'last.pth').exists()
    rc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr[-2000:]
    _compare_runs(ref, run)


def test_a_failed_evaluation_loses_no_training(folder, tmp_path, monkeypatch):
    """The period's checkpoint is written before its evaluation: an evaluation that dies (a missing package,
    out of memory) leaves last.pth at the period's end, and the resumed run evaluates it first, then ends as the
    uninterrupted run (weights and metrics.jsonl)."""
    from gpvit.tasks.classification import ClassificationTask
    ref = tmp_path / 'uninterrupted'
    train(tiny_config(folder['root'], ref, **STRICT))

    run = tmp_path / 'eval_failed'
    evaluate = ClassificationTask.evaluate
    calls = []

    def failing_evaluate(self, model, loader):
        calls.append(1)
        if len(calls) == 3:  # epoch 2's evaluation (each period evaluates the model, then the EMA)
            raise ModuleNotFoundError("No module named 'a_metric_package'")
        return evaluate(self, model, loader)

    monkeypatch.setattr(ClassificationTask, 'evaluate', failing_evaluate)
    with pytest.raises(ModuleNotFoundError):
        train(tiny_config(folder['root'], run, **STRICT))
    state = torch.load(run / 'last.pth', weights_only=True)
    assert state['step'] == 8 and state['pending_record']['step'] == 8  # epoch 2's training is saved
    assert len(_records(run)) == 1
    monkeypatch.setattr(ClassificationTask, 'evaluate', evaluate)
    train(tiny_config(folder['root'], run, **STRICT), resume='auto')
    assert 'pending_record' not in torch.load(run / 'last.pth', weights_only=True)
    _compare_runs(ref, run)

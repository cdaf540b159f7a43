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


def test_changed_settings_are_refused_unless_overridden(folder, tmp_path):
    """Resume with another lr: refused, naming the key and both values; with --override the new lr applies from
    the checkpoint's update on (the schedule of a run started with it) and is recorded."""
    from gpvit.engine.config import ConfigError
    run = tmp_path / 'run'
    with pytest.raises(Killed):
        train(tiny_config(folder['root'], run), hooks={'after_epoch': _kill_at_epoch(1)})
    step = torch.load(run / 'last.pth', weights_only=True)['step']
    with pytest.raises(ConfigError, match=r"^--resume: the run in .*last\.pth was trained with other settings "
                                          r"\(optim\.lr: 0\.002 -> 0\.05\)\. .*--override optim\.lr"):
        train(tiny_config(folder['root'], run, ['optim.lr=0.05']), resume='auto')
    with pytest.raises(ConfigError, match=r'loader\.batch_size: 8 -> 4'):
        train(tiny_config(folder['root'], run, ['loader.batch_size=4']), resume='auto')
    with pytest.raises(ConfigError, match=r"model\.name: 'gpvit_mini' -> 'gc_vit_xxtiny'"):
        train(tiny_config(folder['root'], run, ['model.name=gc_vit_xxtiny', 'model.kwargs={}']), resume='auto')
    # where things are and how they are reported may change freely, and how the same arithmetic is carried out
    train(tiny_config(folder['root'], run, ['optim.lr=0.05', 'log.curves=false', 'loader.workers=1',
                                            'optim.fused=false']),
          resume='auto', override=['optim.lr'])
    state = torch.load(run / 'last.pth', weights_only=True)
    assert state['overrides'] == [{'key': 'optim.lr', 'old': 0.002, 'new': 0.05, 'step': step}]
    assert state['config']['optim']['lr'] == 0.05
    fresh = tmp_path / 'fresh'
    train(tiny_config(folder['root'], fresh, ['optim.lr=0.05']))
    assert [r['lr'] for r in _records(run)][1:] == [r['lr'] for r in _records(fresh)][1:]


def test_extending_a_finished_run(folder, tmp_path):
    """More epochs for a finished run: refused (it would train on at the final lr); with --override train.epochs
    the schedule is rebuilt for the new length and followed from the last update."""
    from gpvit.engine.config import ConfigError
    run = tmp_path / 'run'
    train(tiny_config(folder['root'], run, ['train.epochs=2']))
    with pytest.raises(ConfigError, match=r'train\.epochs: 2 -> 4'):
        train(tiny_config(folder['root'], run, ['train.epochs=4']), resume='auto')
    train(tiny_config(folder['root'], run, ['train.epochs=4']), resume='auto', override=['train.epochs'])
    longer = tmp_path / 'longer'
    train(tiny_config(folder['root'], longer, ['train.epochs=4']))
    lrs, expected = [r['lr'] for r in _records(run)], [r['lr'] for r in _records(longer)]
    assert len(lrs) == 4 and lrs[2:] == expected[2:] and lrs[2] > lrs[1]  # back on the 4-epoch cosine


def test_one_live_run_per_output_dir(folder, tmp_path):
    from gpvit.engine.config import ConfigError
    from gpvit.engine.lock import RunLock
    run = tmp_path / 'run'
    with RunLock(run):
        with pytest.raises(ConfigError, match=rf'^output_dir: {run} is in use by another run \(process {os.getpid()} '
                                              r'on .*, started .*\); wait for it to finish, or choose another'):
            train(tiny_config(folder['root'], run))
    assert not (run / 'last.pth').exists()
    # a lock held by a process that is killed is released by the kernel
    code = f'from gpvit.engine.lock import RunLock; import time; RunLock({str(run)!r}).acquire(); print("held", ' \
           f'flush=True); time.sleep(600)'
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'held'
    with pytest.raises(ConfigError, match=rf'in use by another run \(process {proc.pid} '):
        RunLock(run).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    RunLock(run).acquire().release()


def _kill_at_epoch(epoch):
    def hook(trainer):
        if trainer.epoch == epoch:
            raise Killed(f'killed after epoch {epoch}')
    return hook


_FAULTY_RUN = '''
import os, signal, sys
import torch
import gpvit.engine.state as state
from gpvit.cli import main
from gpvit.tasks.classification import ClassificationTask

kind, n = sys.argv[1], int(sys.argv[2])
calls = [0]


def due():
    calls[0] += 1
    return calls[0] == n


def kill():
    os.kill(os.getpid(), signal.SIGKILL)


if kind in ('step', 'eval'):
    name = 'train_step' if kind == 'step' else 'evaluate'
    real = getattr(ClassificationTask, name)

    def patched(self, model, batch):
        out = real(self, model, batch)
        if due():
            kill()  # after the forward, before backward / before the metrics come back
        return out
    setattr(ClassificationTask, name, patched)
else:
    real_save = state.atomic_save

    def atomic_save(obj, path, save_fn=None):
        if not due():
            return real_save(obj, path, save_fn)

        def half_then_kill(o, p):  # the kill lands in the middle of writing the file
            torch.save(o, p)
            data = open(p, 'rb').read()
            open(p, 'wb').write(data[:len(data) // 2])
            kill()
        return real_save(obj, path, half_then_kill)
    state.atomic_save = atomic_save
sys.exit(main(['train', '--config', sys.argv[3], '--resume', 'auto']))
'''


@pytest.mark.timeout(900)
def test_sigkill_at_random_points_then_resume_is_bit_exact(folder, tmp_path):
    """Ten SIGKILLs at random points (inside a training step, an evaluation, the middle of a checkpoint write),
    each followed by `gpvit train --resume auto`: the run ends with the uninterrupted run's weights, optimiser,
    EMA and metrics.jsonl, and no temporary file of a cut write is left."""
    import random
    sections = dict(STRICT, train={'epochs': 4, 'accum_steps': 2, 'threads': 1})
    ref = tmp_path / 'uninterrupted'
    train(tiny_config(folder['root'], ref, **sections))

    run = tmp_path / 'faulty'
    cfg_file = tmp_path / 'cfg.yaml'
    cfg_file.write_text(yaml.safe_dump(tiny_raw(folder['root'], run, **sections)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent)] + sys.path))
    rng = random.Random(0)
    points = [rng.choice([('step', rng.randint(1, 6)), ('eval', rng.randint(1, 2)), ('save', rng.randint(1, 3))])
              for _ in range(10)]
    kinds_killed = set()
    for kind, n in points:
        proc = subprocess.run([sys.executable, '-c', _FAULTY_RUN, kind, str(n), str(cfg_file)], env=env,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode == -signal.SIGKILL:
            kinds_killed.add(kind)
        else:
            assert proc.returncode == 0, proc.stderr[-2000:]  # the run finished before the kill point
    assert kinds_killed == {'step', 'eval', 'save'}
    proc = subprocess.run([sys.executable, '-m', 'gpvit', 'train', '--config', str(cfg_file), '--resume', 'auto'],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _compare_runs(ref, run)
    assert not list(run.glob('.*.tmp'))

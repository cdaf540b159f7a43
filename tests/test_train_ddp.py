"""Two-process DistributedDataParallel training on CPU (gloo): it learns, and both ranks end identical."""
import json
import os

import pytest
import torch
from distkit import run_ranks

from gpvit.tasks import train

from trainkit import make_image_folder, state_equal, tiny_raw


def _worker(rank: int, raw: dict, out: str) -> None:
    from gpvit.tasks import build_config
    result = train(build_config(raw), device='cpu')
    sd = {'model': result.model.state_dict(), 'ema': result.ema.state_dict()}
    torch.save(sd, os.path.join(out, f'rank{rank}.pt'))


@pytest.mark.timeout(600)
def test_two_process_ddp_on_cpu(tmp_path):
    folder = make_image_folder(tmp_path / 'data', classes=3, per_class=10, val_per_class=4)
    out = tmp_path / 'run'
    raw = tiny_raw(folder['root'], out, train={'epochs': 5, 'threads': 1, 'accum_steps': 2},
                   ema={'enabled': True, 'decay': 0.9},
                   data={'train_aug': {'auto_augment': 'rand-m9-mstd0.5-inc1'}}, loader={'batch_size': 4})
    run_ranks(_worker, (raw, str(tmp_path)), timeout=500)

    r0 = torch.load(tmp_path / 'rank0.pt', weights_only=True)
    r1 = torch.load(tmp_path / 'rank1.pt', weights_only=True)
    assert state_equal(r0['model'], r1['model']) is None
    assert state_equal(r0['ema'], r1['ema']) is None
    recs = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert len(recs) == 5  # written once, by rank 0
    assert recs[-1]['train_loss'] < recs[0]['train_loss'] - 0.05, [r['train_loss'] for r in recs]
    # 32 training samples, 2 processes x 4 per micro-batch x 2 accumulated (no gradient sync on the first):
    # 2 updates per epoch; evaluation counts every image once
    ckpt = torch.load(out / 'last.pth', weights_only=True)
    assert ckpt['global_batch'] == 16 and ckpt['iters_per_epoch'] == 2 and len(ckpt['rng']) == 2
    assert all(r['val_count'] == 12 and r['val_skipped_images'] == 1 for r in recs)
    assert all(r['train_skipped_images'] == 2 for r in recs)
    assert state_equal(ckpt['model'], r0['model']) is None
    log = (out / 'train.log').read_text()
    assert '2 process(es) on cpu' in log and 'x 2 accumulation = global batch 16' in log


def _create_and_destroy(rank: int, store_dir: str, cycles: int) -> None:
    import torch.distributed as dist

    from gpvit.engine.distributed import all_gather_object, all_reduce_sum, destroy
    torch.set_num_threads(1)
    for i in range(cycles):
        dist.init_process_group('gloo', init_method=f'file://{store_dir}/store{i}', rank=rank, world_size=2)
        assert all_gather_object({'rank': rank, 'cycle': i}) == [{'rank': 0, 'cycle': i}, {'rank': 1, 'cycle': i}]
        assert all_reduce_sum({'n': 1.}, torch.device('cpu')) == {'n': 2.}
        destroy()  # what the process does at exit, right after its last collective


@pytest.mark.timeout(200)
def test_destroying_the_process_group_after_collectives_does_not_hang(tmp_path):
    # torch 2.7's gloo destructor deadlocked against a worker thread still freeing a finished all_gather's
    # tensors within 50 such cycles; without `destroy`'s grace period this test hung in 3 runs of 3 there.
    # Each cycle takes about 0.2 s.
    run_ranks(_create_and_destroy, (str(tmp_path), 60), timeout=120)

"""Dense tasks under two-process DDP on CPU (gloo): training keeps the ranks identical, and evaluation over two
shards (COCO results gathered, confusion matrices summed) gives exactly the single-process metrics."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from test_detection import det_raw, make_coco
from test_segmentation import make_ade, seg_raw

from gpvit.tasks import build_config, evaluate_checkpoint, train

from trainkit import state_equal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))


def _train_worker(rank: int, world: int, port: int, raw: dict, out: str) -> None:
    _env(rank, world, port)
    torch.set_num_threads(1)
    result = train(build_config(raw), device='cpu')
    torch.save(result.model.state_dict(), os.path.join(out, f'rank{rank}.pt'))


def _eval_worker(rank: int, world: int, port: int, raws: list, ckpts: list, out: str) -> None:
    _env(rank, world, port)
    torch.set_num_threads(1)
    metrics = [evaluate_checkpoint(build_config(raw), ckpt, device='cpu') for raw, ckpt in zip(raws, ckpts)]
    with open(os.path.join(out, f'metrics{rank}.json'), 'w') as f:
        json.dump(metrics, f)


@pytest.mark.timeout(900)
def test_two_process_training_and_evaluation(tmp_path):
    make_coco(tmp_path / 'coco', n_val=3)
    make_ade(tmp_path / 'ade', n_val=3)
    det = det_raw(tmp_path / 'coco', tmp_path / 'det', 'mask_rcnn')
    det['train'].update(iters=2, eval_interval=2)
    det['loader']['batch_size'] = 1
    mp.spawn(_train_worker, args=(2, _free_port(), det, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / 'rank0.pt', weights_only=True)
    r1 = torch.load(tmp_path / 'rank1.pt', weights_only=True)
    assert state_equal(r0, r1) is None
    rec = [json.loads(line) for line in (tmp_path / 'det' / 'metrics.jsonl').read_text().splitlines()][-1]
    assert rec['val_images'] == 3 and 'val_segm_AP' in rec  # both shards' images scored once

    seg = seg_raw(tmp_path / 'ade', tmp_path / 'seg', 'upernet')
    seg['train'].update(iters=2, eval_interval=2)
    train(build_config(seg))
    raws = [det, seg]
    ckpts = [str(tmp_path / 'det' / 'last.pth'), str(tmp_path / 'seg' / 'last.pth')]
    single = [evaluate_checkpoint(build_config(raw), ckpt, device='cpu') for raw, ckpt in zip(raws, ckpts)]
    mp.spawn(_eval_worker, args=(2, _free_port(), raws, ckpts, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        metrics = json.loads((tmp_path / f'metrics{rank}.json').read_text())
        for m, s in zip(metrics, single):
            assert m.keys() == s.keys()
            for k in s:
                assert m[k] == pytest.approx(s[k], abs=1e-9), (rank, k)
    assert single[0]['images'] == 3 and single[1]['images'] == 4 and single[1]['clipped_labels'] == 16

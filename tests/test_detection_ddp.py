"""Dense tasks under two-process DDP on CPU (gloo): training keeps the ranks identical, and evaluation over two
shards (COCO results gathered, confusion matrices summed) gives exactly the single-process metrics."""
import json
import os

import pytest
import torch
import torch.distributed
from distkit import run_ranks
from test_detection import det_raw, make_coco
from test_segmentation import make_ade, seg_raw

from gpvit.tasks import build_config, evaluate_checkpoint, train

from trainkit import state_equal


def _train_worker(rank: int, raw: dict, out: str) -> None:
    torch.set_num_threads(1)
    result = train(build_config(raw), device='cpu')
    torch.save(result.model.state_dict(), os.path.join(out, f'rank{rank}.pt'))


def _eval_worker(rank: int, raws: list, ckpts: list, out: str) -> None:
    torch.set_num_threads(1)
    metrics, groups = [], []
    for raw, ckpt in zip(raws, ckpts):
        metrics.append(evaluate_checkpoint(build_config(raw), ckpt, device='cpu'))
        groups.append(torch.distributed.group.WORLD)
    # one process group for both runs: re-creating it on the same MASTER_PORT races against rank 0's old store
    assert groups[0] is not None and groups[1] is groups[0]
    with open(os.path.join(out, f'metrics{rank}.json'), 'w') as f:
        json.dump(metrics, f)


@pytest.mark.timeout(900)
def test_two_process_training_and_evaluation(tmp_path):
    make_coco(tmp_path / 'coco', n_val=3)
    make_ade(tmp_path / 'ade', n_val=3)
    det = det_raw(tmp_path / 'coco', tmp_path / 'det', 'mask_rcnn')
    det['train'].update(iters=2, eval_interval=2)
    det['loader']['batch_size'] = 1
    run_ranks(_train_worker, (det, str(tmp_path)), timeout=400)
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
    run_ranks(_eval_worker, (raws, ckpts, str(tmp_path)), timeout=400)
    for rank in (0, 1):
        metrics = json.loads((tmp_path / f'metrics{rank}.json').read_text())
        for m, s in zip(metrics, single):
            assert m.keys() == s.keys()
            for k in s:
                assert m[k] == pytest.approx(s[k], abs=1e-9), (rank, k)
    assert single[0]['images'] == 3 and single[1]['images'] == 4 and single[1]['clipped_labels'] == 16

"""Data: folder layout errors, unreadable images skipped and counted, LMDB round trip, samplers and seeding."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from gpvit.cli import main as cli_main
from gpvit.data import (DataError, ImageFolderDataset, LMDBDataset, collate_skipping, decode_image, read_lmdb_meta,
                        scan_image_folder, train_transform, write_lmdb)
from gpvit.engine.data import ResumableSampler, SeededDataset, ShardSampler, build_train_loader
from trainkit import class_image, make_image_folder


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('imgs'), classes=3, per_class=4, val_per_class=2)


def test_scan_finds_classes_and_images(folder):
    samples, classes = scan_image_folder(folder['train'])
    assert classes == ['class_0', 'class_1', 'class_2']
    assert len(samples) == 3 * 4 + 2  # the two corrupt files are only found when read
    assert [t for _, t in samples] == sorted(t for _, t in samples)


def test_wrong_layouts_are_clear_errors(tmp_path, folder):
    with pytest.raises(DataError, match=r'no such folder \(expected ROOT/train/<class>/\*\.jpeg'):
        scan_image_folder(tmp_path / 'nothing' / 'train')
    flat = tmp_path / 'flat' / 'train'
    flat.mkdir(parents=True)
    class_image(0, np.random.RandomState(0)).save(flat / 'a.png')
    with pytest.raises(DataError, match=r'holds 1 image files but no class folders'):
        scan_image_folder(flat)
    empty = tmp_path / 'empty' / 'train'
    (empty / 'cat').mkdir(parents=True)
    (empty / 'dog').mkdir()
    class_image(0, np.random.RandomState(0)).save(empty / 'dog' / 'a.png')
    with pytest.raises(DataError, match=r"1 class folder\(s\) without images .*\['cat'\]"):
        scan_image_folder(empty)
    with pytest.raises(DataError, match=r"class folders differ from the training split's: missing \['class_3'\]"):
        scan_image_folder(folder['val'], ['class_0', 'class_1', 'class_2', 'class_3'])


def test_unreadable_images_are_substituted_in_training_and_counted(folder, caplog):
    ds = ImageFolderDataset(folder['train'])
    names = [p for p, _ in ds.samples]
    bad = [names.index(str(p)) for p in folder['corrupt_train']]
    for i in bad:
        with pytest.raises(Exception) as e:
            ds.load(i)
        assert 'UnreadableImage' in type(e.value).__name__
    img, target, skipped = ds[bad[0]]
    assert skipped == 1 and isinstance(img, Image.Image)
    assert 'skipping unreadable image' in caplog.text and 'zz_garbage.jpeg' in caplog.text
    totals = sum(ds[i][2] for i in range(len(ds)))
    assert totals == 2  # each corrupt file counted once per pass


def test_unreadable_images_are_dropped_in_evaluation(folder):
    tf = train_transform(32, scale=(1, 1), ratio=(1, 1), hflip=0.)
    ds = ImageFolderDataset(folder['val'], tf, on_error='skip')
    batch = collate_skipping([ds[i] for i in range(len(ds))])
    assert batch['skipped'] == 1
    assert batch['images'].shape == (len(ds) - 1, 3, 32, 32)
    assert len(batch['targets']) == len(ds) - 1
    only_bad = collate_skipping([ds[len(ds) - 1]])
    assert only_bad['images'] is None and only_bad['skipped'] == 1


def test_a_whole_corrupt_class_is_never_fatal(tmp_path, caplog):
    """200 unreadable files in a row: every sample is substituted by a readable one, each bad file is read
    (and reported) once per process, and each bad sample counts once."""
    bad, good = tmp_path / 'train' / 'a', tmp_path / 'train' / 'b'
    bad.mkdir(parents=True)
    good.mkdir()
    for i in range(200):
        (bad / f'{i:03d}.png').write_bytes(b'nope')
    class_image(1, np.random.RandomState(0)).save(good / 'ok.png')
    ds = ImageFolderDataset(tmp_path / 'train')
    samples = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]
    assert all(s[1] == 1 for s in samples)  # always the readable image of class b
    assert sum(s[2] for s in samples) == 400
    assert caplog.text.count('skipping unreadable image') == 200


def test_no_readable_image_at_all_is_an_error(tmp_path):
    d = tmp_path / 'train' / 'a'
    d.mkdir(parents=True)
    for i in range(3):
        (d / f'{i}.png').write_bytes(b'nope')
    ds = ImageFolderDataset(tmp_path / 'train')
    with pytest.raises(DataError, match='not one of its 3 images can be read'):
        ds[0]


def test_lmdb_round_trip_skips_unreadable(tmp_path, folder):
    info = write_lmdb(folder['train'], tmp_path / 'train.lmdb', progress=False)
    assert info['classes'] == ['class_0', 'class_1', 'class_2']
    assert sorted(info['skipped']) == sorted(map(str, folder['corrupt_train']))  # checked while writing
    folder_ds = ImageFolderDataset(folder['train'])
    lmdb_ds = LMDBDataset(tmp_path / 'train.lmdb')
    assert len(lmdb_ds) == info['written'] == len(folder_ds) - 2
    readable = [(p, t) for p, t in folder_ds.samples if p not in info['skipped']]
    for i, (path, target) in enumerate(readable):
        img, t = lmdb_ds.load(i)
        assert t == target
        assert np.array_equal(np.asarray(img), np.asarray(decode_image(path, path)))
    # a record that went bad after writing is skipped (and counted) when read
    import lmdb
    lmdb_ds._env.close()
    env = lmdb.open(str(tmp_path / 'train.lmdb'))
    with env.begin(write=True) as txn:
        raw = txn.get(b'00000003')
        txn.put(b'00000003', raw[:len(raw) // 2])
    env.close()
    lmdb_ds = LMDBDataset(tmp_path / 'train.lmdb')
    with pytest.raises(Exception, match=r'train.lmdb\[3\]'):
        lmdb_ds.load(3)
    img, t, skipped = lmdb_ds[3]
    assert skipped == 1 and t == readable[4][1]
    # the validation split takes the training split's classes; existing outputs are never overwritten
    write_lmdb(folder['val'], tmp_path / 'val.lmdb', class_names=info['classes'], progress=False)
    assert read_lmdb_meta(tmp_path / 'val.lmdb')['classes'] == info['classes']
    with pytest.raises(DataError, match='already exists'):
        write_lmdb(folder['val'], tmp_path / 'val.lmdb', progress=False)
    with pytest.raises(DataError, match="classes differ from the training split's"):
        LMDBDataset(tmp_path / 'val.lmdb', class_names=['a', 'b', 'c'])
    with pytest.raises(DataError, match='no such LMDB database'):
        LMDBDataset(tmp_path / 'missing.lmdb')


def test_lmdb_dataset_survives_pickling_for_workers(tmp_path, folder):
    write_lmdb(folder['val'], tmp_path / 'val.lmdb', progress=False)
    ds = LMDBDataset(tmp_path / 'val.lmdb', train_transform(32, hflip=0.))
    ds.load(0)  # opens the environment in this process
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_skipping)
    n = sum(len(b['targets']) for b in loader)
    assert n == len(ds) - sum(b['skipped'] for b in loader) or n == len(ds)


def test_gpvit_lmdb_command(tmp_path, folder, capsys):
    rc = cli_main(['lmdb', '--train-img-dir', str(folder['train']), '--train-out', str(tmp_path / 'tr'),
                   '--val-img-dir', str(folder['val']), '--val-out', str(tmp_path / 'va')])
    out = capsys.readouterr().out
    assert rc == 0
    assert 'train: 12 images in 3 classes' in out and '2 unreadable image(s) skipped' in out
    assert 'val: 6 images in 3 classes' in out and '1 unreadable image(s) skipped' in out
    assert read_lmdb_meta(tmp_path / 'va')['classes'] == read_lmdb_meta(tmp_path / 'tr')['classes']
    rc = cli_main(['lmdb', '--train-img-dir', str(tmp_path / 'nope'), '--train-out', str(tmp_path / 'x')])
    assert rc == 2 and 'no such folder' in capsys.readouterr().err


def test_resumable_sampler_skips_and_shards():
    data = list(range(23))
    full = list(ResumableSampler(data, shuffle=True, seed=3))
    s = ResumableSampler(data, shuffle=True, seed=3)
    s.set_start(10)
    assert list(s) == full[10:] and len(s) == 13
    s.set_epoch(1)
    s.set_start(0)
    assert [i for i, _ in s] != [i for i, _ in full]  # a new order every epoch
    shards = [list(ResumableSampler(data, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 12
    assert {i for i, _ in shards[0] + shards[1]} == set(data)
    evals = [list(ShardSampler(23, 2, r)) for r in range(2)]
    assert sorted(evals[0] + evals[1]) == data  # evaluation: every sample exactly once


def test_augmentation_is_a_function_of_seed_epoch_index(folder):
    """The same sample gets the same augmentation with 0 or 2 workers and leaves the caller's RNGs alone."""
    tf = train_transform(32, auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.5)
    ds = ImageFolderDataset(folder['val'], tf)

    def epoch_batches(workers, start=0):
        s = ResumableSampler(ds, seed=5)
        s.set_epoch(2)
        s.set_start(start)
        return [b['images'] for b in build_train_loader(ds, 2, s, workers, False, False, 2, collate_skipping)]

    torch.manual_seed(0)
    random.seed(0)
    before = torch.rand(1), random.random()
    torch.manual_seed(0)
    random.seed(0)
    a = epoch_batches(0)
    after = torch.rand(1), random.random()
    assert before == after  # loading did not consume the global RNG
    b = epoch_batches(2)
    assert len(a) == len(b) == len(ds) // 2
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = epoch_batches(0, start=2)
    assert torch.equal(c[0], a[1])  # resuming part-way gives the same later batches
    ds2 = SeededDataset(ds)
    x1, x2 = ds2[(0, 11)][0], ds2[(0, 12)][0]
    assert not torch.equal(x1, x2) and torch.equal(x1, ds2[(0, 11)][0])


def test_randaugment_posterize_at_full_magnitude_does_not_crash():
    """rand-m9-mstd0.5-inc1 can draw magnitude 10, i.e. posterize to 0 bits, which Pillow >= 11 rejects."""
    tf = train_transform(32, auto_augment='rand-m9-mstd0.5-inc1')
    ra = next(t for t in tf.transforms if hasattr(t, 'ops'))
    op = next(o for o in ra.ops if o.name == 'PosterizeIncreasing')
    op.magnitude, op.magnitude_std, op.prob = 10, 0, 1.0
    img = class_image(1, np.random.RandomState(0), 40)
    out = op(img)
    assert out.size == img.size and out.getextrema() == ((0, 0), (0, 0), (0, 0))  # 0 bits kept: black
    op.magnitude = 5
    assert op(img).getextrema() != ((0, 0), (0, 0), (0, 0))

"""Helpers of the training / data tests: tiny real image datasets on disk and tiny run configs."""
import io
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image

from gpvit.engine.config import apply_overrides
from gpvit.tasks import build_config

# A reduced gpvit_mini: width 48 (3 stripe heads per direction, 6 group heads of 8 channels), 32 px input.
TINY_MODEL = {'embed_dim': 48, 'img_size': 32}


def class_image(label: int, rng: np.random.RandomState, size: int = 40) -> Image.Image:
    """A noisy image whose class is easy to learn: a bright bar whose colour and orientation depend on it."""
    img = rng.randint(0, 60, size=(size, size, 3)).astype(np.uint8)
    colour = [(255, 40, 40), (40, 255, 40), (40, 40, 255), (255, 255, 40)][label % 4]
    pos = rng.randint(size // 4, size // 2)
    if label % 2:
        img[:, pos:pos + size // 4] = colour
    else:
        img[pos:pos + size // 4, :] = colour
    return Image.fromarray(img)


def make_image_folder(root: Path, classes: int = 3, per_class: int = 8, val_per_class: int = 4, size: int = 40,
                      corrupt: bool = True, seed: int = 0) -> Dict[str, Path]:
    """``root/{train,val}/class_k/*.{png,jpeg}`` (alternating formats). With ``corrupt``, one file of garbage
    bytes and one truncated JPEG are added to train and one garbage file to val.

    Returns:
        ``{'root', 'train', 'val', 'corrupt_train': [...], 'corrupt_val': [...]}``.
    """
    rng = np.random.RandomState(seed)
    out = {'root': root, 'corrupt_train': [], 'corrupt_val': []}
    for split, n in (('train', per_class), ('val', val_per_class)):
        for c in range(classes):
            d = root / split / f'class_{c}'
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = class_image(c, rng, size)
                if i % 2:
                    img.save(d / f'{i:03d}.jpeg', quality=95)
                else:
                    img.save(d / f'{i:03d}.png')
        out[split] = root / split
    if corrupt:
        bad = root / 'train' / 'class_0' / 'zz_garbage.jpeg'
        bad.write_bytes(b'this is not an image' * 10)
        buf = io.BytesIO()
        class_image(1, rng, size).save(buf, format='JPEG', quality=95)
        truncated = root / 'train' / 'class_1' / 'zz_truncated.jpeg'
        truncated.write_bytes(buf.getvalue()[:len(buf.getvalue()) // 3])
        vbad = root / 'val' / 'class_2' / 'zz_garbage.png'
        vbad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 40)
        out['corrupt_train'] = [bad, truncated]
        out['corrupt_val'] = [vbad]
    return out


def tiny_raw(root: Path, out: Path, **sections) -> Dict:
    """A raw config dict for a tiny, fast classification run (overridable per section)."""
    raw = {
        'task': 'classification',
        'output_dir': str(out),
        'model': {'name': 'gpvit_mini', 'kwargs': dict(TINY_MODEL, drop_path_rate=0.1)},
        'data': {
            'format': 'folder', 'root': str(root), 'img_size': 32, 'crop_pct': 1.0,
            'train_aug': {'scale': [0.6, 1.0], 'hflip': 0.5, 'auto_augment': None, 're_prob': 0.0},
            'mixup': {'mixup_alpha': 0.0, 'cutmix_alpha': 0.0},
            'label_smoothing': 0.1,
        },
        'loader': {'batch_size': 8, 'workers': 0, 'persistent_workers': False},
        'optim': {'lr': 2e-3, 'weight_decay': 0.05, 'clip_grad': 1.0},
        'sched': {'name': 'cosine', 'warmup_iters': 2, 'warmup_ratio': 0.1, 'min_lr_ratio': 0.05},
        'train': {'epochs': 3, 'log_interval': 1, 'seed': 0, 'threads': 1},
        'ckpt': {'interval': 1, 'keep_last': 2},
        'log': {'progress': False, 'curves': True},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section] = _merge(raw[section], values)
        else:
            raw[section] = values
    return raw


def _merge(a: Dict, b: Dict) -> Dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_config(root: Path, out: Path, overrides: Sequence[str] = (), **sections):
    raw = tiny_raw(root, out, **sections)
    apply_overrides(raw, list(overrides))
    return build_config(raw)


def state_equal(a: Dict, b: Dict) -> Optional[str]:
    """None if two state dicts are bit-identical, else the first differing key."""
    if a.keys() != b.keys():
        return f'keys differ: {sorted(set(a) ^ set(b))[:5]}'
    for k in a:
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not (a[k] == b[k]).all():
            return k
    return None

"""Image-classification datasets: ImageNet-style folders, with unreadable images skipped and counted.

Layout (as in the GC ViT README)::

    ROOT/train/<class>/*.jpeg
    ROOT/val/<class>/*.jpeg

Class indices follow the sorted class-folder names of the training split; the validation split must use
the same class names (a missing folder is an error, since accuracy would silently be off).
"""
import io
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ['IMG_EXTENSIONS', 'DataError', 'UnreadableImage', 'ClassificationDataset', 'ImageFolderDataset',
           'scan_image_folder', 'decode_image', 'to_rgb', 'collate_skipping']

_logger = logging.getLogger(__name__)

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


class UnreadableImage(Exception):
    """One image that cannot be decoded."""


#: Pillow modes of more than 8 bits per sample: ``convert('RGB')`` clips them to 255 instead of scaling.
_WIDE_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB. 16-bit grey images (16-bit PNG, TIFF: Pillow's ``I;16*`` and ``I`` modes) are scaled
    from 0..65535 to 0..255 first; Pillow's ``convert('RGB')`` would clip them (almost every pixel 255)."""
    if img.mode in _WIDE_MODES:
        import numpy as np
        a = np.asarray(img).astype(np.float64)
        # 'I' is 32-bit: a 16-bit range where it fits in one (the usual decode of 16-bit files), else its own max
        top = 65535. if img.mode != 'I' or a.max(initial=0) <= 65535 else float(a.max())
        img = Image.fromarray(np.clip(np.rint(a * (255. / top)), 0, 255).astype(np.uint8), 'L')
    return img.convert('RGB')


def decode_image(data: Any, name: str) -> Image.Image:
    """Open and fully decode an image (path or bytes) as 8-bit RGB (:func:`to_rgb`); any failure is an
    :class:`UnreadableImage`."""
    try:
        src = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
        with Image.open(src) as img:
            img.load()  # the full decode: truncated files fail here
            return to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as e:
        raise UnreadableImage(f'{name}: {type(e).__name__}: {e}') from None


def scan_image_folder(split_dir: Path, class_names: Optional[Sequence[str]] = None,
                      extensions: Sequence[str] = IMG_EXTENSIONS) -> Tuple[List[Tuple[str, int]], List[str]]:
    """List ``split_dir/<class>/<image>`` files.

    Args:
        split_dir: a split folder, e.g. ``ROOT/train``.
        class_names: classes to expect (the training split's); None: the sorted sub-folders.

    Returns:
        ``(samples, class_names)``: ``(path, class index)`` pairs sorted by class then file name.

    Raises:
        DataError: the folder is missing, holds images but no class folders, a class folder without images,
            or classes other than ``class_names``.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        parent = split_dir.parent
        found = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else None
        hint = (f'; {parent} has sub-folders {found[:10]}' if found else
                f'; {parent} does not exist' if found is None else f'; {parent} has no sub-folders')
        raise DataError(f'{split_dir}: no such folder (expected ROOT/train/<class>/*.jpeg and '
                        f'ROOT/val/<class>/*.jpeg){hint}')
    extensions = tuple(e.lower() for e in extensions)
    entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    dirs = [e.name for e in entries if e.is_dir() and not e.name.startswith('.')]
    loose = [e.name for e in entries if e.is_file() and e.name.lower().endswith(extensions)]
    if not dirs:
        if loose:
            raise DataError(f'{split_dir}: holds {len(loose)} image files but no class folders; expected '
                            f'{split_dir}/<class>/<image> (one sub-folder per class, as for ImageNet)')
        raise DataError(f'{split_dir}: no class folders (expected {split_dir}/<class>/<image>)')
    if loose:
        _logger.warning('%s: %d image files outside class folders are ignored', split_dir, len(loose))
    if class_names is None:
        class_names = dirs
    else:
        missing = sorted(set(class_names) - set(dirs))
        extra = sorted(set(dirs) - set(class_names))
        if missing or extra:
            raise DataError(f'{split_dir}: class folders differ from the training split\'s: '
                            + (f'missing {missing[:10]}' if missing else '')
                            + ('; ' if missing and extra else '')
                            + (f'unknown {extra[:10]}' if extra else ''))
    index = {c: i for i, c in enumerate(class_names)}
    samples: List[Tuple[str, int]] = []
    empty = []
    for c in class_names:
        files = sorted(e.path for e in os.scandir(split_dir / c)
                       if e.is_file() and e.name.lower().endswith(extensions))
        if not files:
            empty.append(c)
        samples.extend((f, index[c]) for f in files)
    if empty:
        raise DataError(f'{split_dir}: {len(empty)} class folder(s) without images ({", ".join(extensions)}): '
                        f'{empty[:10]}')
    return samples, list(class_names)


class ClassificationDataset(Dataset):
    """Base of the classification datasets: ``(image, target, skipped)`` samples.

    An unreadable image is logged (once per process) and counted, never fatal; in ``'substitute'`` mode
    (training) the next readable image takes its place, keeping batches full (every process must run the same
    number of steps); in ``'skip'`` mode (evaluation) the sample is ``(None, -1, 1)`` and
    :func:`collate_skipping` drops it, so metrics count only readable images. ``skipped`` is 1 for a sample
    whose own image was unreadable, else 0. Known-bad files are not read again. Only a dataset without a
    single readable image is an error.
    """
    on_error_modes = ('substitute', 'skip')

    def __init__(self, transform: Optional[Callable] = None, on_error: str = 'substitute'):
        if on_error not in self.on_error_modes:
            raise ValueError(f'on_error must be one of {self.on_error_modes}, got {on_error!r}')
        self.transform = transform
        self.on_error = on_error
        self.classes: List[str] = []
        self._bad: set = set()  # indices found unreadable in this process

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Tuple[Image.Image, int]:
        """The decoded image and class index; raises :class:`UnreadableImage`."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Tuple[Any, int, int]:
        n = len(self)
        for attempt in range(n):
            i = (index + attempt) % n
            if i not in self._bad:
                try:
                    img, target = self.load(i)
                except UnreadableImage as e:
                    self._bad.add(i)
                    _logger.warning('skipping unreadable image %s', e)
                else:
                    if self.transform is not None:
                        img = self.transform(img)
                    return img, target, int(attempt > 0)
            if self.on_error == 'skip':
                return None, -1, 1
        raise DataError(f'{self!r}: not one of its {n} images can be read (see the warnings above)')


class ImageFolderDataset(ClassificationDataset):
    """``root/<class>/<image>`` (one split of an ImageNet-style folder)."""

    def __init__(self, root, transform: Optional[Callable] = None, class_names: Optional[Sequence[str]] = None,
                 on_error: str = 'substitute'):
        super().__init__(transform, on_error)
        self.root = Path(root)
        self.samples, self.classes = scan_image_folder(self.root, class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f'ImageFolderDataset({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes)'

    def load(self, index: int) -> Tuple[Image.Image, int]:
        path, target = self.samples[index]
        return decode_image(path, path), target


def collate_skipping(batch: Sequence[Tuple[Any, int, int]]) -> Dict[str, Any]:
    """Collate ``(image, target, skipped)`` samples into ``{'images', 'targets', 'skipped'}``, dropping the
    samples without an image; ``images`` is None if none is left."""
    import torch
    skipped = sum(s[2] for s in batch)
    kept = [s for s in batch if s[0] is not None]
    if not kept:
        return {'images': None, 'targets': torch.zeros(0, dtype=torch.long), 'skipped': skipped}
    return {'images': torch.stack([s[0] for s in kept]), 'targets': torch.tensor([s[1] for s in kept]),
            'skipped': skipped}

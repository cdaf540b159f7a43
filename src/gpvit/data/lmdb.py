"""LMDB image datasets: one database per split, holding the original encoded files (no re-encoding).

Written by :func:`write_lmdb` (``gpvit lmdb``). Layout of a database:

* ``__meta__``: JSON ``{"format": "gpvit-lmdb", "version": 1, "length": N, "classes": [...]}``;
* ``00000000`` ... : ``struct('<iH')`` (class index, length of the relative path), the path (UTF-8), then
  the image file's bytes.

A validation split is written with the training split's class list, so class indices agree.
"""
import io
import json
import logging
import os
import struct
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from PIL import Image

from .folder import ClassificationDataset, DataError, UnreadableImage, decode_image, scan_image_folder

__all__ = ['LMDBDataset', 'write_lmdb', 'read_lmdb_meta']

_logger = logging.getLogger(__name__)

_META = b'__meta__'
_FORMAT = 'gpvit-lmdb'
_HEADER = struct.Struct('<iH')


def _key(i: int) -> bytes:
    return b'%08d' % i


def _open(path: Path, write: bool = False, map_size: int = 0):
    import lmdb
    if write:
        return lmdb.open(str(path), map_size=map_size, subdir=True, meminit=False, map_async=True)
    if not path.exists():
        raise DataError(f'{path}: no such LMDB database (write one with `gpvit lmdb`)')
    try:
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                         subdir=path.is_dir(), max_readers=512)
    except lmdb.Error as e:
        raise DataError(f'{path}: not a readable LMDB database: {e}') from e


def read_lmdb_meta(path) -> Dict:
    """The ``__meta__`` record of a database written by :func:`write_lmdb`."""
    path = Path(path)
    env = _open(path)
    try:
        with env.begin() as txn:
            raw = txn.get(_META)
    finally:
        env.close()
    if raw is None:
        raise DataError(f'{path}: an LMDB database, but not one written by `gpvit lmdb` (no __meta__ record)')
    meta = json.loads(raw)
    if meta.get('format') != _FORMAT:
        raise DataError(f'{path}: unknown LMDB format {meta.get("format")!r}')
    return meta


class LMDBDataset(ClassificationDataset):
    """One split written by :func:`write_lmdb`. The environment is opened lazily in each process."""

    def __init__(self, path, transform: Optional[Callable] = None, class_names: Optional[Sequence[str]] = None,
                 on_error: str = 'substitute'):
        super().__init__(transform, on_error)
        self.path = Path(path)
        meta = read_lmdb_meta(self.path)
        self.length = int(meta['length'])
        self.classes = list(meta['classes'])
        if class_names is not None and list(class_names) != self.classes:
            raise DataError(f'{self.path}: its classes differ from the training split\'s (write the validation '
                            f'split with the training split\'s classes, as `gpvit lmdb` does)')
        if self.length == 0:
            raise DataError(f'{self.path}: the database holds no images')
        self._env = None
        self._pid = None

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f'LMDBDataset({str(self.path)!r}, {len(self)} images, {len(self.classes)} classes)'

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_env'] = None  # environments do not survive pickling / fork
        return state

    def _txn_get(self, key: bytes) -> Optional[bytes]:
        if self._env is None or self._pid != os.getpid():
            if self._env is not None:  # inherited through fork: LMDB environments must not cross it
                self._env.close()
            self._env = _open(self.path)
            self._pid = os.getpid()
        with self._env.begin(buffers=False) as txn:
            return txn.get(key)

    def load(self, index: int) -> Tuple[Image.Image, int]:
        raw = self._txn_get(_key(index))
        if raw is None or len(raw) < _HEADER.size:
            raise UnreadableImage(f'{self.path}[{index}]: record missing or truncated')
        target, n = _HEADER.unpack_from(raw)
        name = raw[_HEADER.size:_HEADER.size + n].decode('utf-8', 'replace')
        data = raw[_HEADER.size + n:]
        return decode_image(data, f'{self.path}[{index}] ({name})'), target


def _check_bytes(data: bytes) -> None:
    """Cheap structural check of an encoded image (PIL ``verify``; no full decode)."""
    with Image.open(io.BytesIO(data)) as img:
        img.verify()


def write_lmdb(img_dir, out, class_names: Optional[Sequence[str]] = None, full_decode: bool = True,
               commit_every: int = 1000, progress: bool = True) -> Dict:
    """Write ``img_dir/<class>/<image>`` into a new LMDB database ``out``.

    Unreadable files are skipped, logged and counted. The database is written to ``out.tmp`` and renamed at
    the end, so an interrupted run never leaves a half-written ``out``.

    Args:
        img_dir: a split folder (``train`` or ``val``).
        out: the database folder to create (must not exist).
        class_names: the class list to use (the training split's, for a validation split).
        full_decode: decode every image to check it (the default: a truncated JPEG passes the structural check);
            False: only PIL's structural ``verify``, faster, and broken files are then skipped at training time.

    Returns:
        ``{'written': n, 'skipped': [paths], 'classes': [...]}``.
    """
    out = Path(out)
    if out.exists():
        raise DataError(f'{out}: already exists; remove it or choose another output')
    samples, classes = scan_image_folder(Path(img_dir), class_names)
    total_bytes = sum(os.path.getsize(p) for p, _ in samples)
    map_size = int(total_bytes * 1.2) + len(samples) * 512 + (64 << 20)
    tmp = out.with_name(out.name + '.tmp')
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    env = _open(tmp, write=True, map_size=map_size)
    skipped: List[str] = []
    n = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(samples), desc=f'lmdb {out.name}', unit='img', disable=None)
    try:
        txn = env.begin(write=True)
        for path, target in samples:
            if bar is not None:
                bar.update()
            try:
                with open(path, 'rb') as f:
                    data = f.read()
                if full_decode:
                    decode_image(data, path)
                else:
                    _check_bytes(data)
            except (UnreadableImage, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                _logger.warning('skipping unreadable image %s: %s', path, e)
                skipped.append(path)
                continue
            rel = os.path.relpath(path, img_dir).encode('utf-8')
            txn.put(_key(n), _HEADER.pack(target, len(rel)) + rel + data)
            n += 1
            if n % commit_every == 0:
                txn.commit()
                txn = env.begin(write=True)
        meta = {'format': _FORMAT, 'version': 1, 'length': n, 'classes': classes}
        txn.put(_META, json.dumps(meta).encode())
        txn.commit()
        env.sync()
    except BaseException:
        env.close()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    env.close()
    os.replace(tmp, out)
    if skipped:
        _logger.warning('%s: %d unreadable image(s) skipped', img_dir, len(skipped))
    if n == 0:
        raise DataError(f'{img_dir}: no readable image')
    return {'written': n, 'skipped': skipped, 'classes': classes}

"""Published weights by name: download once into the torch hub cache, check, read.

``pretrained=True`` (``timm.create_model`` or :func:`gpvit.create_model`) fetches the file a model's pretrained
cfg names (``url``) into ``<torch hub dir>/checkpoints/`` (``$TORCH_HOME/hub/checkpoints``, where timm and
torchvision keep theirs) and reads it with :func:`gpvit.checkpoint.read_checkpoint`, so a downloaded file goes
through the same family filter as a local one.

* A download is written to a ``.partial`` file beside its destination and renamed only when complete and
  checked: an interrupted or failed download never stays in the cache.
* The SHA-256 is checked where one is known: from :data:`KNOWN_SHA256`, or from a torch-hub style file name
  (``name-<hex prefix>.pth``).
* A cached file that cannot be read as a checkpoint is removed, so the next call downloads it again.
* Every failure (offline, unreachable host, HTTP error, hash mismatch, unreadable file) is one
  :class:`WeightsUnavailable` naming the URL, the cache path where the file can be put by hand, and
  ``checkpoint=PATH`` as the alternative.
"""
import hashlib
import logging
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, Optional

from .checkpoint import CheckpointError, StateDict, read_checkpoint

__all__ = ['KNOWN_SHA256', 'WeightsUnavailable', 'cache_dir', 'cached_file', 'download_weights', 'load_weights']

_logger = logging.getLogger(__name__)

#: SHA-256 of published files, by URL. The GPViT and GC ViT releases publish none; add one here (or use a
#: hash-named file) to have downloads checked.
KNOWN_SHA256: Dict[str, str] = {}

_HASH_IN_NAME = re.compile(r'-([a-f0-9]{8,64})\.')  # torch hub convention: resnet18-f37072fd.pth
_TIMEOUT_S = 60.
_CHUNK = 1 << 20


class WeightsUnavailable(CheckpointError):
    """Published weights that cannot be downloaded or read."""


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub
    return Path(torch.hub.get_dir()) / 'checkpoints'


def cached_file(url: str) -> Path:
    """The cache path of ``url``'s file (whether or not it is there yet)."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise WeightsUnavailable(f'{url}: the URL names no file')
    return cache_dir() / name


def _expected_sha256(url: str, path: Path) -> Optional[str]:
    if url in KNOWN_SHA256:
        return KNOWN_SHA256[url].lower()
    m = _HASH_IN_NAME.search(path.name)
    return m[1] if m else None


def _unavailable(url: str, path: Path, reason: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f'cannot get the weights at {url}: {reason}. Download the file by hand to {path}, or pass a local file '
        f'with checkpoint=PATH (gpvit.create_model) / model.pretrained=PATH (configs)')


def download_weights(url: str, progress: bool = True) -> Path:
    """The local path of ``url``'s file, downloading it into the cache if it is not there.

    Raises:
        WeightsUnavailable: the download failed or the file's hash is not the known one; nothing is left in
            the cache.
    """
    path = cached_file(url)
    if path.is_file():
        return path
    expected = _expected_sha256(url, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f'{path.name}.{os.getpid()}.partial')
    _logger.warning('downloading %s to %s', url, path)
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={'User-Agent': 'gpvit'})
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response, open(partial, 'wb') as f:
            total = int(response.headers.get('Content-Length') or 0) or None
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc=path.name, leave=False,
                           disable=None)
            try:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
            if total is not None and f.tell() != total:
                raise _unavailable(url, path, f'the download stopped after {f.tell():,} of {total:,} bytes')
        if expected and not digest.hexdigest().startswith(expected):
            raise _unavailable(url, path, f'the file has SHA-256 {digest.hexdigest()}, expected {expected}')
        os.replace(partial, path)
    except urllib.error.HTTPError as e:
        raise _unavailable(url, path, f'HTTP {e.code} {e.reason}') from None
    except urllib.error.URLError as e:
        raise _unavailable(url, path, f'the host cannot be reached ({e.reason}); offline?') from None
    except (socket.timeout, TimeoutError, ConnectionError, OSError) as e:
        raise _unavailable(url, path, f'{type(e).__name__}: {e}') from None
    finally:
        if partial.exists():
            partial.unlink()
    return path


def load_weights(url: str, progress: bool = True) -> StateDict:
    """Download (or take from the cache) and read ``url``'s checkpoint into a flat state dict.

    A cached file that is not a readable checkpoint (truncated by hand, another file of the same name) is
    removed before the error is raised, so the next call downloads it again.
    """
    path = download_weights(url, progress)
    try:
        return read_checkpoint(path)
    except CheckpointError as e:
        path.unlink(missing_ok=True)
        raise _unavailable(url, path, f'the downloaded file is not a readable checkpoint ({e}); it was removed '
                                      f'from the cache') from None

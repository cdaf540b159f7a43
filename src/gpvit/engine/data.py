"""Samplers and loaders that make a run reproducible and resumable at any update.

* Training order: :class:`ResumableSampler`, torch's :class:`DistributedSampler` (shuffled with
  ``seed + epoch``, sharded over the processes) that can start part-way through an epoch.
* Augmentation randomness: every sample is transformed under its own seed, derived from (seed, epoch, index),
  with the process's global RNG states saved and restored around it (:class:`SeededDataset`). A sample's
  augmentation therefore depends neither on the number of loader workers nor on which worker loads it, and
  the global RNG (dropout, drop-path, mixup) only advances with training steps: resuming from a checkpoint
  saved at update *n* replays updates *n+1...* exactly.
* Evaluation: :class:`ShardSampler` splits the set over the processes without padding, so metrics summed over
  the processes count every sample exactly once.
"""
import itertools
import random
from typing import Any, Callable, Iterator, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = ['ResumableSampler', 'ShardSampler', 'SeededDataset', 'sample_seed', 'build_train_loader',
           'build_eval_loader']

_MASK63 = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch (SplitMix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK63


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` yielding ``(index, sample_seed)`` pairs, able to start at a position of an epoch.

    Works without a process group (pass ``num_replicas`` and ``rank``). ``set_epoch(e)`` then
    ``set_start(k)`` skip the first ``k`` samples of this process's shard of epoch ``e``.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch = self.epoch
        for i in itertools.islice(super().__iter__(), self.start, None):
            yield i, sample_seed(self.seed, epoch, i)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...``: every sample on exactly one process, no padding."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0):
        self.length, self.num_replicas, self.rank = length, num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))


class SeededDataset(Dataset):
    """Loads ``dataset[index]`` for an ``(index, seed)`` item under that seed, leaving the caller's RNGs as they were.

    Seeds Python's ``random``, NumPy's global RNG and torch's default CPU generator (not CUDA's).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Any) -> Any:
        if not isinstance(item, tuple):
            return self.dataset[item]
        index, seed = item
        saved = torch.default_generator.get_state(), random.getstate(), np.random.get_state()
        try:
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed & 0xFFFFFFFF)
            return self.dataset[index]
        finally:
            torch.default_generator.set_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


def _loader_kwargs(workers: int, pin_memory: bool, persistent: bool, prefetch: int, collate_fn) -> dict:
    kwargs = dict(num_workers=workers, pin_memory=pin_memory and torch.cuda.is_available(), collate_fn=collate_fn)
    if workers > 0:
        kwargs.update(persistent_workers=persistent, prefetch_factor=prefetch)
    return kwargs


def build_train_loader(dataset: Dataset, batch_size: int, sampler: ResumableSampler, workers: int = 0,
                       pin_memory: bool = True, persistent_workers: bool = True, prefetch_factor: int = 2,
                       collate_fn: Optional[Callable] = None) -> DataLoader:
    """A training loader: full batches only, order and augmentation from the sampler's seeds.

    Worker processes get their base seed from a private generator, so creating the loader's iterator does not
    consume the global RNG.
    """
    generator = torch.Generator().manual_seed(sampler.seed)
    return DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=sampler, drop_last=True,
                      generator=generator,
                      **_loader_kwargs(workers, pin_memory, persistent_workers, prefetch_factor, collate_fn))


def build_eval_loader(dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0, workers: int = 0,
                      pin_memory: bool = True, collate_fn: Optional[Callable] = None) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), num_replicas, rank),
                      drop_last=False, generator=generator,
                      **_loader_kwargs(workers, pin_memory, False, 2, collate_fn))

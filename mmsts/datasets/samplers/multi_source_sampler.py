"""An infinite sampler that mixes several sources in fixed proportions, and
the batch sampler that checks its batch size against the data loader's."""
import logging
import math
from numbers import Number
from typing import Iterator, List, Optional, Sequence, Sized

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from mmpretrain.registry import DATA_SAMPLERS
from torch.utils.data import BatchSampler, Sampler


@DATA_SAMPLERS.register_module()
class MultiSourceSampler(Sampler):
    """Infinite sampler whose every batch takes a fixed number of samples
    from each sub-dataset of a ``ConcatDataset``.

    With a batch size of ``(1 + mu) * B`` and ``source_ratio=[1, mu]`` over
    ``ConcatDataset([labeled, unlabeled])``, every batch holds exactly ``B``
    labeled samples followed by ``mu * B`` unlabeled ones (FixMatch).

    The batch size must be that of the data loader, which the sampler cannot
    see by itself: PyTorch's ``DataLoader`` cuts the stream of indices into
    batches of its own ``batch_size``, and a different one would mix the
    sources in other proportions (e.g. 2 labeled and 4 unlabeled samples per
    batch of 6 with a sampler batch size of 8). Use it in one of two ways:

    - with :class:`MultiSourceBatchSampler` (recommended, the semi-supervised
      base configs do): it takes the data loader's ``batch_size``, gives it
      to this sampler if ``batch_size`` is None here, and raises a
      ``ValueError`` naming both values, when the data loader is built, if
      ``batch_size`` is given here and differs::

          train_dataloader = dict(
              batch_size=512,
              sampler=dict(type='MultiSourceSampler', source_ratio=[1, 7]),
              batch_sampler=dict(type='MultiSourceBatchSampler'),
              ...)

    - as a plain sampler, as mmdet's ``MultiSourceSampler``: then
      ``batch_size`` is required and nothing can check it against the data
      loader's, so a warning says so when the sampler is first iterated.

    Each source is read as an endless stream of passes, each pass a fresh
    permutation (``shuffle=True``) of the source. Pass ``k`` of source ``s``
    is a pure function of ``(seed, s, k)``, so the stream is identical on
    every rank and after a restart. Under distributed training, rank ``r`` of
    ``W`` takes the positions ``r, r + W, r + 2W, ...`` of each stream, so
    within a pass the ranks draw disjoint shards of every source, as with
    MMEngine's ``InfiniteSampler``. The sampler is meant for
    ``IterBasedTrainLoop``: resuming at iteration ``i`` skips ``i`` batches,
    which continues the stream exactly where the interrupted run was,
    provided the seed is the same. The runner builds the sampler before it
    loads the checkpoint, so a seed drawn at random (``randomness.seed=None``
    and no ``seed`` here) is drawn anew by the resumed run: fix ``seed`` here
    or ``randomness.seed`` for an exact continuation.

    Args:
        dataset (Sized): A ``ConcatDataset`` (anything with ``datasets`` and
            ``cumulative_sizes``).
        batch_size (int, optional): Samples per batch on each rank, over all
            sources: the data loader's ``batch_size``. If None, it is taken
            from the data loader by :class:`MultiSourceBatchSampler`.
            Defaults to None.
        source_ratio (Sequence[int | float]): Relative number of samples of
            each source in a batch, e.g. ``[1, mu]``. The batch size must
            split in these proportions into whole, positive numbers.
        shuffle (bool): Whether to shuffle each pass over a source. Defaults
            to True.
        seed (int, optional): Random seed, the same on all ranks. If None, a
            random seed is drawn and synchronised across ranks. The runner
            passes ``randomness.seed`` (or the seed it drew) unless the
            config gives one. Defaults to None.
    """

    def __init__(self,
                 dataset: Sized,
                 batch_size: Optional[int] = None,
                 source_ratio: Optional[Sequence[Number]] = None,
                 shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        if hasattr(dataset, 'full_init'):
            dataset.full_init()  # a lazily built ConcatDataset has no sizes
        if not (hasattr(dataset, 'cumulative_sizes')
                and hasattr(dataset, 'datasets')):
            raise TypeError(
                'MultiSourceSampler needs a ConcatDataset (with `datasets` '
                f'and `cumulative_sizes`), but got a {type(dataset).__name__}'
                '.')
        self.check_source_ratio(source_ratio)
        self.num_per_source: Optional[List[int]] = None
        if batch_size is not None:
            self.num_per_source = self.split_batch(batch_size, source_ratio)
        if len(source_ratio) != len(dataset.datasets):
            raise ValueError(
                f'`source_ratio`={list(source_ratio)!r} has '
                f'{len(source_ratio)} entries, but the dataset concatenates '
                f'{len(dataset.datasets)} data sets.')
        self.sizes = [len(d) for d in dataset.datasets]
        for i, size in enumerate(self.sizes):
            if size == 0:
                raise ValueError(f'Source {i} of the dataset is empty.')
        self.offsets = [0] + list(dataset.cumulative_sizes[:-1])

        rank, world_size = get_dist_info()
        self.rank = rank
        self.world_size = world_size
        self.dataset = dataset
        self.batch_size = None if batch_size is None else int(batch_size)
        self.source_ratio = list(source_ratio)
        self.shuffle = shuffle
        if seed is None:
            seed = sync_random_seed()
        self.seed = int(seed)
        self._stream: Optional[Iterator[int]] = None
        self._warned_unchecked = False

    @staticmethod
    def check_source_ratio(source_ratio: Sequence[Number]) -> None:
        """Check that ``source_ratio`` is a list of positive numbers.

        Args:
            source_ratio (Sequence[int | float]): The relative counts.

        Raises:
            ValueError: If it is not.
        """
        if (isinstance(source_ratio,
                       (str, bytes)) or not isinstance(source_ratio, Sequence)
                or len(source_ratio) == 0 or not all(
                    isinstance(r, Number) and not isinstance(r, bool)
                    for r in source_ratio)):
            raise ValueError('`source_ratio` must be a non-empty list of '
                             f'numbers, but got {source_ratio!r}.')
        if any(r <= 0 for r in source_ratio):
            raise ValueError(
                f'Every entry of `source_ratio` must be > 0, but got '
                f'{list(source_ratio)!r} (for FixMatch, [1, mu] needs '
                'mu >= 1).')

    @classmethod
    def split_batch(cls, batch_size: int,
                    source_ratio: Sequence[Number]) -> List[int]:
        """Split ``batch_size`` into per-source counts, exactly.

        Args:
            batch_size (int): The total batch size.
            source_ratio (Sequence[int | float]): The relative counts.

        Returns:
            list[int]: The number of samples of each source in a batch.

        Raises:
            ValueError: If a ratio is not positive, or ``batch_size`` does not
                split into whole positive numbers in these proportions.
        """
        if (isinstance(batch_size, bool)
                or not isinstance(batch_size,
                                  (int, np.integer)) or batch_size < 1):
            raise ValueError('`batch_size` must be a positive integer, but '
                             f'got {batch_size!r}.')
        cls.check_source_ratio(source_ratio)
        total = sum(source_ratio)
        counts = [batch_size * r / total for r in source_ratio]
        rounded = [int(round(c)) for c in counts]
        if any(abs(c - n) > 1e-6 or n < 1 for c, n in zip(counts, rounded)):
            raise ValueError(
                f'`batch_size`={batch_size} cannot be split in the '
                f'proportions `source_ratio`={list(source_ratio)!r}: that '
                f'would be {[round(c, 3) for c in counts]} samples per '
                f'source. Use batch_size = (1 + mu) * B with source_ratio = '
                f'[1, mu] (B labeled and mu * B unlabeled samples).')
        return rounded

    def set_batch_size(self, batch_size: int) -> None:
        """Take the data loader's batch size, or check it against ours.

        Called by :class:`MultiSourceBatchSampler` when the data loader is
        built.

        Args:
            batch_size (int): The data loader's ``batch_size``.

        Raises:
            ValueError: If the sampler has another ``batch_size``, or the
                batch size does not split in the proportions
                ``source_ratio``.
        """
        if self.batch_size is not None:
            if batch_size != self.batch_size:
                raise ValueError(
                    'The data loader and its MultiSourceSampler have '
                    f'different batch sizes: `train_dataloader.batch_size`='
                    f'{batch_size!r} vs `train_dataloader.sampler.'
                    f'batch_size`={self.batch_size!r}. Every batch must '
                    f'hold the {self.num_per_source} samples per source of '
                    'the sampler\'s batch size; set both to the same value, '
                    'or leave out `sampler.batch_size` to use the data '
                    'loader\'s.')
            return
        if self._stream is not None:
            raise RuntimeError('The batch size of a MultiSourceSampler '
                               'cannot be set once it is iterated.')
        self.num_per_source = self.split_batch(batch_size, self.source_ratio)
        self.batch_size = int(batch_size)

    def _pass(self, source: int, k: int) -> np.ndarray:
        """The ``k``-th pass over ``source``, as indices of the source."""
        size = self.sizes[source]
        if not self.shuffle:
            return np.arange(size)
        # Independent, well-mixed streams for every (seed, source, pass).
        rng = np.random.default_rng([self.seed % 2**63, source, k])
        return rng.permutation(size)

    def _source_stream(self, source: int) -> Iterator[int]:
        """This rank's share of the endless stream of ``source``, as indices
        of the concatenated data set."""
        size, offset = self.sizes[source], self.offsets[source]
        position, k = self.rank, 0
        while True:
            if position < size:
                order = self._pass(source, k)
                while position < size:
                    yield offset + int(order[position])
                    position += self.world_size
            position -= size
            k += 1

    def _batches(self) -> Iterator[int]:
        streams = [self._source_stream(s) for s in range(len(self.sizes))]
        while True:
            for stream, num in zip(streams, self.num_per_source):
                for _ in range(num):
                    yield next(stream)

    def indices(self) -> Iterator[int]:
        """The endless stream of indices, ``batch_size`` per batch, source by
        source; every call continues the same stream.

        Raises:
            ValueError: If the sampler has no batch size yet.
        """
        if self.batch_size is None:
            raise ValueError(
                'MultiSourceSampler has no batch size: use it with '
                "`batch_sampler=dict(type='MultiSourceBatchSampler')` in the "
                'data loader config, which gives it the data loader\'s '
                '`batch_size`, or set `sampler.batch_size` to the data '
                'loader\'s `batch_size`.')
        if self._stream is None:
            self._stream = self._batches()
        return self._stream

    def __iter__(self) -> Iterator[int]:
        """Yield indices forever, ``batch_size`` per batch, source by
        source."""
        stream = self.indices()
        if not self._warned_unchecked:
            self._warned_unchecked = True
            print_log(
                'MultiSourceSampler is used as a plain sampler: its '
                f'`batch_size`={self.batch_size} cannot be checked against '
                "the data loader's, which must be the same. Add "
                "`batch_sampler=dict(type='MultiSourceBatchSampler')` to the "
                'data loader config to check it.',
                logger='current',
                level=logging.WARNING)
        # Not `yield from`: closing this iterator must not close the shared
        # stream, which the next `iter()` continues.
        for index in stream:
            yield index

    def __len__(self) -> int:
        """Length of the concatenated data set."""
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Not used: the sampler is infinite and iteration-based."""


@DATA_SAMPLERS.register_module()
class MultiSourceBatchSampler(BatchSampler):
    """Cuts the stream of a :class:`MultiSourceSampler` into the data
    loader's batches, and makes sure that the two batch sizes agree.

    MMEngine's ``Runner.build_dataloader`` builds the ``batch_sampler`` of a
    data loader config with the built ``sampler`` and the data loader's
    ``batch_size``, so a mismatch with the sampler's ``batch_size`` is
    reported while the data loader is built, before any training::

        train_dataloader = dict(
            batch_size=512,
            sampler=dict(type='MultiSourceSampler', source_ratio=[1, 7]),
            batch_sampler=dict(type='MultiSourceBatchSampler'),
            ...)

    Args:
        sampler (MultiSourceSampler): The sampler of the data loader.
        batch_size (int): The data loader's ``batch_size``. If the sampler has
            no ``batch_size``, it takes this one; if it has another one, a
            ``ValueError`` names both.
    """

    def __init__(self, sampler: MultiSourceSampler, batch_size: int) -> None:
        # No super().__init__(): it only stores its arguments and checks
        # `drop_last`, which does not apply (every batch is full).
        if not isinstance(sampler, MultiSourceSampler):
            raise TypeError(
                'MultiSourceBatchSampler needs `sampler=dict(type='
                "'MultiSourceSampler', ...)` in the data loader config, but "
                f'the sampler is a {type(sampler).__name__}.')
        if (isinstance(batch_size, bool)
                or not isinstance(batch_size,
                                  (int, np.integer)) or batch_size < 1):
            raise ValueError('`train_dataloader.batch_size` must be a '
                             f'positive integer, but got {batch_size!r}.')
        sampler.set_batch_size(batch_size)
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.drop_last = False

    def __iter__(self) -> Iterator[List[int]]:
        """Yield batches forever, each ``batch_size`` indices long."""
        stream = self.sampler.indices()
        while True:
            yield [next(stream) for _ in range(self.batch_size)]

    def __len__(self) -> int:
        """Batches in one pass over the concatenated data set (the stream
        itself is endless)."""
        return math.ceil(len(self.sampler) / self.batch_size)

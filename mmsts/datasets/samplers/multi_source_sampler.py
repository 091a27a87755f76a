"""An infinite sampler that mixes several sources in fixed proportions."""
from numbers import Number
from typing import Iterator, List, Optional, Sequence, Sized

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from mmpretrain.registry import DATA_SAMPLERS
from torch.utils.data import Sampler


@DATA_SAMPLERS.register_module()
class MultiSourceSampler(Sampler):
    """Infinite sampler whose every batch takes a fixed number of samples
    from each sub-dataset of a ``ConcatDataset``.

    With ``batch_size=(1 + mu) * B`` and ``source_ratio=[1, mu]`` over
    ``ConcatDataset([labeled, unlabeled])``, every batch holds exactly ``B``
    labeled samples followed by ``mu * B`` unlabeled ones (FixMatch). The
    data loader's ``batch_size`` must be the same ``batch_size``.

    Each source is read as an endless stream of passes, each pass a fresh
    permutation (``shuffle=True``) of the source. Pass ``k`` of source ``s``
    is a pure function of ``(seed, s, k)``, so the stream is identical on
    every rank and after a restart. Under distributed training, rank ``r`` of
    ``W`` takes the positions ``r, r + W, r + 2W, ...`` of each stream, so
    within a pass the ranks draw disjoint shards of every source, as with
    MMEngine's ``InfiniteSampler``. The sampler is meant for
    ``IterBasedTrainLoop``: resuming at iteration ``i`` skips ``i`` batches,
    which continues the stream exactly where the interrupted run was,
    provided the seed is the same: as for ``InfiniteSampler``, the runner
    builds the sampler before it loads the checkpoint, so set
    ``randomness.seed`` (or ``seed`` here) for an exact continuation.

    Args:
        dataset (Sized): A ``ConcatDataset`` (anything with ``datasets`` and
            ``cumulative_sizes``).
        batch_size (int): Samples per batch on each rank, over all sources.
        source_ratio (Sequence[int | float]): Relative number of samples of
            each source in a batch, e.g. ``[1, mu]``. ``batch_size`` must
            split in these proportions into whole, positive numbers.
        shuffle (bool): Whether to shuffle each pass over a source. Defaults
            to True.
        seed (int, optional): Random seed, the same on all ranks. If None, a
            random seed is drawn and synchronised across ranks. Defaults to
            None.
    """

    def __init__(self,
                 dataset: Sized,
                 batch_size: int,
                 source_ratio: Sequence[Number],
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
        self.batch_size = batch_size
        self.source_ratio = list(source_ratio)
        self.shuffle = shuffle
        if seed is None:
            seed = sync_random_seed()
        self.seed = int(seed)
        self._stream = self._batches()

    @staticmethod
    def split_batch(batch_size: int,
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

    def __iter__(self) -> Iterator[int]:
        """Yield indices forever, ``batch_size`` per batch, source by
        source."""
        yield from self._stream

    def __len__(self) -> int:
        """Length of the concatenated data set."""
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Not used: the sampler is infinite and iteration-based."""

"""Counter-based fragment masks.

A mask is a pure function of ``(seed, stream, step)``: ``stream`` names the
teacher, ``step`` its update count. Every rank of a distributed run therefore
draws the same masks without any communication, and a resumed run redraws
exactly the masks the uninterrupted run would have drawn. The key and counter
of a Philox generator (a counter-based generator) are built from the three
integers; nothing depends on a global random state. The bulk masks of the
fine granularities are drawn from generators seeded from that Philox stream:
on the host, one per block of :data:`HOST_BLOCK` fragments, so that threads
can draw blocks in any order.
"""
import zlib
from typing import Iterator, Sequence

import numpy as np
import torch

_MASK64 = (1 << 64) - 1
# 16-bit uniform draws: the update probability is resolved to 1 / 65536.
_BULK_LEVELS = 1 << 16
#: Fragments drawn from one host generator. The blocks are the unit of work
#: of the CPU update's threads; the size is fixed so that the masks never
#: depend on the number of threads.
HOST_BLOCK = 1 << 20


def stream_id(name: str) -> int:
    """A stable 32-bit id for a teacher name (same on every rank and run)."""
    return zlib.crc32(name.encode('utf-8'))


class FragmentMaskGenerator:
    """Draws which fragments of a teacher are updated at a step.

    Args:
        preserve_prob (float): Probability that a fragment is preserved
            (not updated) at a step.
        seed (int): The run's seed. Defaults to 0.
        stream (int): Distinguishes teachers of the same run, see
            :func:`stream_id`. Defaults to 0.
    """

    def __init__(self,
                 preserve_prob: float,
                 seed: int = 0,
                 stream: int = 0) -> None:
        self.preserve_prob = float(preserve_prob)
        self.seed = int(seed)
        self.stream = int(stream)
        # The blocks of a step share one sub-seed: remember the last one.
        self._last_sub_seed: tuple = (None, 0)

    def _philox(self, step: int, substream: int = 0) -> np.random.Generator:
        key = ((self.seed & _MASK64) << 64) | (self.stream & _MASK64)
        # The step and substream go into the upper counter words: draws
        # within one step advance the first word, so no two (step, substream)
        # pairs ever share random numbers.
        counter = ((int(step) & _MASK64) << 64) | (
            (int(substream) & _MASK64) << 128)
        return np.random.Generator(np.random.Philox(key=key, counter=counter))

    def update_flags(self, step: int, num: int) -> np.ndarray:
        """One draw per fragment: ``True`` where the fragment is updated.

        Args:
            step (int): The update count of the teacher.
            num (int): The number of fragments.
        """
        return self._philox(step).random(num) >= self.preserve_prob

    def _threshold(self) -> int:
        """``p`` on the 16-bit scale of the bulk draws."""
        return int(round(self.preserve_prob * _BULK_LEVELS))

    def _sub_seed(self, step: int, substream: int) -> int:
        """The seed of the bulk draws of one (step, substream)."""
        key = (self.seed, self.stream, int(step), int(substream))
        cached = self._last_sub_seed  # one read: other threads may write
        if cached[0] != key:
            seed = int(self._philox(step, substream + 1).integers(0, 1 << 63))
            cached = self._last_sub_seed = (key, seed)
        return cached[1]

    def host_block_masks(self,
                         step: int,
                         num: int,
                         block: int,
                         chunk: int = HOST_BLOCK,
                         substream: int = 0) -> Iterator[np.ndarray]:
        """The host update masks of one block of fragments, piece by piece.

        Fragment ``i`` of ``num`` belongs to block ``i // HOST_BLOCK``. Each
        block has its own generator (an SFC64 keyed by the step's seed and
        the block index, a counter-derived sub-stream), so that blocks can be
        drawn in any order, by any thread, with the same result. Within a
        block the fragments get 16 random bits each, in order; pieces of
        ``chunk`` fragments are drawn one after the other so that they stay
        in cache.

        Args:
            step (int): The update count of the teacher.
            num (int): The total number of fragments.
            block (int): The block, in ``[0, ceil(num / HOST_BLOCK))``.
            chunk (int): Fragments per piece; a multiple of 4 dividing
                :data:`HOST_BLOCK`. Defaults to :data:`HOST_BLOCK`.
            substream (int): As in :meth:`bulk_update_mask`. Defaults to 0.

        Yields:
            np.ndarray: Boolean masks, ``True`` where updated, of the
            consecutive pieces of the block.
        """
        if chunk % 4 or HOST_BLOCK % chunk:
            raise ValueError('`chunk` must be a multiple of 4 dividing '
                             f'{HOST_BLOCK}, but got {chunk!r}')
        start = block * HOST_BLOCK
        stop = min(num, start + HOST_BLOCK)
        threshold = self._threshold()
        if threshold >= _BULK_LEVELS:
            for begin in range(start, stop, chunk):
                yield np.zeros(min(chunk, stop - begin), dtype=bool)
            return
        bits = np.random.SFC64(
            np.random.SeedSequence(
                self._sub_seed(step, substream), spawn_key=(block, )))
        for begin in range(start, stop, chunk):
            size = min(chunk, stop - begin)
            # 16 random bits per fragment, read as int16 (uniform over
            # [-2**15, 2**15)): numpy compares int16 faster than uint16.
            draws = bits.random_raw((size + 3) // 4).view(np.int16)[:size]
            yield draws >= threshold - (1 << 15)

    def host_update_mask(self,
                         step: int,
                         num: int,
                         substream: int = 0) -> np.ndarray:
        """All the host update masks of a step, as one boolean array.

        Args:
            step (int): The update count of the teacher.
            num (int): The number of fragments.
            substream (int): As in :meth:`bulk_update_mask`. Defaults to 0.
        """
        blocks = [
            mask for block in range(-(-num // HOST_BLOCK))
            for mask in self.host_block_masks(
                step, num, block, substream=substream)
        ]
        return np.concatenate(blocks) if blocks else np.zeros(0, bool)

    def bulk_update_mask(self,
                         step: int,
                         num: int,
                         device: torch.device,
                         substream: int = 0) -> torch.Tensor:
        """A boolean mask of ``num`` fragments on ``device``, ``True`` where
        updated, for the fine granularities.

        On CPU the bits come from numpy (torch's CPU generator is several
        times slower), see :meth:`host_block_masks`; on an accelerator from
        torch's generator of that device. Both are seeded from the same
        Philox stream, so the mask is a pure function of
        ``(seed, stream, step)`` for a given device type. The update
        probability is resolved to 1 / 65536.

        Args:
            step (int): The update count of the teacher.
            num (int): The number of fragments.
            device (torch.device): Where the mask is needed.
            substream (int): Separates several masks of one step (one per
                device/dtype group of tensors). Defaults to 0.
        """
        device = torch.device(device)
        if device.type == 'cpu':
            return torch.from_numpy(
                self.host_update_mask(step, num, substream))
        threshold = self._threshold()
        if threshold >= _BULK_LEVELS:
            return torch.zeros(num, dtype=torch.bool, device=device)
        generator = torch.Generator(device=device)
        generator.manual_seed(self._sub_seed(step, substream))
        draws = torch.randint(
            0,
            _BULK_LEVELS, (num, ),
            generator=generator,
            device=device,
            dtype=torch.int32)
        return draws >= threshold


def split_sizes(tensors: Sequence[torch.Tensor], granularity: str):
    """Number of fragments in each tensor for a granularity."""
    if granularity == 'channel':
        return [t.shape[0] if t.dim() else 1 for t in tensors]
    return [t.numel() for t in tensors]

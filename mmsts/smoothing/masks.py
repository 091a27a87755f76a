"""Counter-based fragment masks.

A mask is a pure function of ``(seed, stream, step)``: ``stream`` names the
teacher, ``step`` its update count. Every rank of a distributed run therefore
draws the same masks without any communication, and a resumed run redraws
exactly the masks the uninterrupted run would have drawn. The key and counter
of a Philox generator (a counter-based generator) are built from the three
integers; nothing depends on a global random state. The bulk masks of the
fine granularities are drawn from generators seeded from that Philox stream:
on the host, one per block of fragments (see
:func:`~mmsts.smoothing.host_fine.host_block_masks`, next to the kernel that
draws them), so that threads can draw blocks in any order.
"""
import zlib
from typing import Sequence

import numpy as np
import torch

_MASK64 = (1 << 64) - 1
#: Levels of the bulk draws of the fine granularities (16-bit uniform
#: draws): the update probability is resolved to 1 / 65536.
BULK_LEVELS = 1 << 16


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

    def bulk_threshold(self) -> int:
        """``p`` on the 16-bit scale of the bulk draws: a fragment is updated
        where its draw in ``[0, BULK_LEVELS)`` is at least this."""
        return int(round(self.preserve_prob * BULK_LEVELS))

    def sub_seed(self, step: int, substream: int) -> int:
        """The seed of the bulk draws of one (step, substream).

        Args:
            step (int): The update count of the teacher.
            substream (int): Separates the masks of the groups of one step.
        """
        key = (self.seed, self.stream, int(step), int(substream))
        cached = self._last_sub_seed  # one read: other threads may write
        if cached[0] != key:
            seed = int(self._philox(step, substream + 1).integers(0, 1 << 63))
            cached = self._last_sub_seed = (key, seed)
        return cached[1]

    def bulk_update_mask(self,
                         step: int,
                         num: int,
                         device: torch.device,
                         substream: int = 0) -> torch.Tensor:
        """A boolean mask of ``num`` fragments on ``device``, ``True`` where
        updated, for the fine granularities.

        On CPU the bits come from numpy (torch's CPU generator is several
        times slower), see
        :func:`~mmsts.smoothing.host_fine.host_block_masks`; on an
        accelerator from torch's generator of that device. Both are seeded
        from the same Philox stream, so the mask is a pure function of
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
            # Imported here: the host kernel module imports this one.
            from .host_fine import host_update_mask
            return torch.from_numpy(
                host_update_mask(self, step, num, substream))
        threshold = self.bulk_threshold()
        if threshold >= BULK_LEVELS:
            return torch.zeros(num, dtype=torch.bool, device=device)
        generator = torch.Generator(device=device)
        generator.manual_seed(self.sub_seed(step, substream))
        draws = torch.randint(
            0,
            BULK_LEVELS, (num, ),
            generator=generator,
            device=device,
            dtype=torch.int32)
        return draws >= threshold


def split_sizes(tensors: Sequence[torch.Tensor], granularity: str):
    """Number of fragments in each tensor for a granularity."""
    if granularity == 'channel':
        return [t.shape[0] if t.dim() else 1 for t in tensors]
    return [t.numel() for t in tensors]

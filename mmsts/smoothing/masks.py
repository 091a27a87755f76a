"""Counter-based fragment masks.

A mask is a pure function of ``(seed, stream, step)``: ``stream`` names the
teacher, ``step`` its update count. Every rank of a distributed run therefore
draws the same masks without any communication, and a resumed run redraws
exactly the masks the uninterrupted run would have drawn. The key and counter
of a Philox generator (a counter-based generator) are built from the three
integers; nothing depends on a global random state.
"""
import zlib
from typing import Sequence

import numpy as np
import torch

_MASK64 = (1 << 64) - 1
# 16-bit uniform draws: the update probability is resolved to 1 / 65536.
_BULK_LEVELS = 1 << 16


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

    def __init__(self, preserve_prob: float, seed: int = 0,
                 stream: int = 0) -> None:
        self.preserve_prob = float(preserve_prob)
        self.seed = int(seed)
        self.stream = int(stream)

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

    def bulk_update_mask(self,
                         step: int,
                         num: int,
                         device: torch.device,
                         substream: int = 0) -> torch.Tensor:
        """A boolean mask of ``num`` fragments on ``device``, ``True`` where
        updated, for the fine granularities.

        On CPU the bits come from numpy (torch's CPU generator is several
        times slower); on an accelerator from torch's generator of that
        device. Both are seeded from the same Philox stream, so the mask is a
        pure function of ``(seed, stream, step)`` for a given device type.

        Args:
            step (int): The update count of the teacher.
            num (int): The number of fragments.
            device (torch.device): Where the mask is needed.
            substream (int): Separates several masks of one step (one per
                device/dtype group of tensors). Defaults to 0.
        """
        threshold = int(round(self.preserve_prob * _BULK_LEVELS))
        sub_seed = int(self._philox(step, substream + 1).integers(0, 1 << 63))
        device = torch.device(device)
        if threshold >= _BULK_LEVELS:
            return torch.zeros(num, dtype=torch.bool, device=device)
        if device.type == 'cpu':
            # 16 random bits per fragment, read as int16 (uniform over
            # [-2**15, 2**15)); torch compares int16 much faster than uint16.
            words = np.random.SFC64(sub_seed).random_raw((num + 3) // 4)
            draws = torch.from_numpy(words.view(np.int16)[:num])
            return draws >= threshold - (1 << 15)
        generator = torch.Generator(device=device)
        generator.manual_seed(sub_seed)
        draws = torch.randint(
            0, _BULK_LEVELS, (num, ), generator=generator, device=device,
            dtype=torch.int32)
        return draws >= threshold


def split_sizes(tensors: Sequence[torch.Tensor], granularity: str):
    """Number of fragments in each tensor for a granularity."""
    if granularity == 'channel':
        return [t.shape[0] if t.dim() else 1 for t in tensors]
    return [t.numel() for t in tensors]

"""The ``'channel'``/``'element'`` update of a group of tensors, and the
fused lerp every update ends in.

:class:`FineUpdate` is the interface of the fine granularities: one update
of one (device, dtype) group of tensors, under a non-finite guard, that
returns how many fragments it drew for update. Two kernels implement it,
chosen once per group: :class:`TorchFineUpdate` (torch kernels, here) on
accelerators and for ``'channel'`` on the host, and
:class:`~mmsts.smoothing.host_fine.HostFineUpdate` (numpy) for
``'element'`` on float CPU tensors.
"""
from typing import Dict, List, Union

import torch
from torch import Tensor

from .guards import Guard
from .masks import FragmentMaskGenerator, split_sizes


def lerp_(teacher: List[Tensor], student: List[Tensor],
          weight: Union[float, Tensor]) -> None:
    """``t += weight * (s - t)`` for every pair, in one fused call.

    Args:
        teacher (list[Tensor]): Updated in place.
        student (list[Tensor]): Of the same shapes.
        weight (float | Tensor): A number, or a 0-dim tensor on the
            tensors' device (kept there: no synchronisation). ``torch.lerp``
            is exact at both ends: 0 keeps, 1 copies (the number 1 copies
            bits, signed zeros included).
    """
    if not isinstance(weight, Tensor):
        if weight == 1.0:
            torch._foreach_copy_(teacher, student)
        else:
            torch._foreach_lerp_(teacher, student, weight)
        return
    by_dtype: Dict[torch.dtype, Tensor] = {}
    weights = [
        by_dtype.setdefault(t.dtype, weight.to(t.dtype)) for t in teacher
    ]
    torch._foreach_lerp_(teacher, student, weights)


class FineUpdate:
    """The ``'channel'``/``'element'`` STS update of one (device, dtype)
    group of tensors.

    Args:
        masks (FragmentMaskGenerator): Draws the masks.
        granularity (str): ``'channel'`` or ``'element'``.
    """

    def __init__(self, masks: FragmentMaskGenerator, granularity: str) -> None:
        self.masks = masks
        self.granularity = granularity

    def __call__(self, teacher: List[Tensor], student: List[Tensor],
                 momentum: float, step: int, substream: int,
                 guard: Guard) -> Union[int, Tensor]:
        """Move the drawn fragments of ``teacher`` toward ``student``.

        Args:
            teacher (list[Tensor]): Updated in place.
            student (list[Tensor]): Same shapes, device and dtype.
            momentum (float): The weight given to the student, in (0, 1].
            step (int): The update count; it keys the masks.
            substream (int): The index of the group in the step; it keys
                the masks too.
            guard (Guard): The non-finite guard of the group's device.

        Returns:
            int | Tensor: The number of fragments drawn for update (also
            where the guard skipped the step), a device tensor on an
            accelerator.
        """
        raise NotImplementedError


class TorchFineUpdate(FineUpdate):
    """The fine update in torch kernels: the mask (drawn on the device) is
    turned into 0/``momentum`` weights that broadcast against each tensor
    and applied by one fused lerp, reading the teacher and the student once
    and writing the teacher once. Nothing is read back to the host.

    Used on accelerators, and for ``'channel'`` on the host too: one dense
    pass over every row costs about as much as an EMA there, while gathering
    and scattering the ~30 % selected rows costs 1.6 times as much. A
    preserved fragment is lerped with weight 0, which leaves it unchanged
    unless the student holds NaN/Inf there (only ``nonfinite='none'`` lets
    that through) or the teacher holds a negative zero (which becomes
    ``+0.0``).
    """

    def __call__(self, teacher, student, momentum, step, substream, guard):
        sizes = split_sizes(teacher, self.granularity)
        flat = self.masks.bulk_update_mask(
            step, sum(sizes), teacher[0].device, substream=substream)
        # count_nonzero: a bool sum is an order of magnitude slower on CPU.
        updated = torch.count_nonzero(flat)
        flat = flat.to(teacher[0].dtype)
        weights = []
        for w, t in zip(flat.split(sizes), teacher):
            if self.granularity == 'channel':
                w = w.view((-1, ) + (1, ) * (t.dim() - 1)) if t.dim() else \
                    w.view(())
            else:
                w = w.view_as(t)
            weights.append(w)

        def update(student: List[Tensor], scale) -> None:
            torch._foreach_mul_(weights, scale * momentum)
            torch._foreach_lerp_(teacher, student, weights)

        guard(student, step, update)
        return updated

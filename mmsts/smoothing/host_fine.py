"""The ``'element'`` STS update of float CPU tensors in numpy, with the
host-side mask blocks it draws.

Torch's CPU random numbers and multi-pass kernels make the element
granularity several times slower than an EMA update on a CPU; this kernel
draws the masks in blocks and applies them in cache-sized pieces instead.
The blocks are also the CPU masks of
:meth:`~mmsts.smoothing.masks.FragmentMaskGenerator.bulk_update_mask`.
"""
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np
import torch
from torch import Tensor

from .fine import FineUpdate
from .masks import BULK_LEVELS, FragmentMaskGenerator, split_sizes

#: Fragments drawn from one host generator. The blocks are the unit of work
#: of the CPU update's threads; the size is fixed so that the masks never
#: depend on the number of threads.
HOST_BLOCK = 1 << 20
#: Elements of one in-cache piece of the CPU fine update (a multiple of 4
#: dividing ``HOST_BLOCK``).
_HOST_CHUNK = 1 << 16
_HOST_INT = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def host_block_masks(masks: FragmentMaskGenerator,
                     step: int,
                     num: int,
                     block: int,
                     chunk: int = HOST_BLOCK,
                     substream: int = 0) -> Iterator[np.ndarray]:
    """The host update masks of one block of fragments, piece by piece.

    Fragment ``i`` of ``num`` belongs to block ``i // HOST_BLOCK``. Each
    block has its own generator (an SFC64 keyed by the step's seed and the
    block index, a counter-derived sub-stream), so that blocks can be drawn
    in any order, by any thread, with the same result. Within a block the
    fragments get 16 random bits each, in order; pieces of ``chunk``
    fragments are drawn one after the other so that they stay in cache.

    Args:
        masks (FragmentMaskGenerator): Keys the draws with
            ``(seed, stream, step, substream)``.
        step (int): The update count of the teacher.
        num (int): The total number of fragments.
        block (int): The block, in ``[0, ceil(num / HOST_BLOCK))``.
        chunk (int): Fragments per piece; a multiple of 4 dividing
            :data:`HOST_BLOCK`. Defaults to :data:`HOST_BLOCK`.
        substream (int): Separates the masks of the groups of one step.
            Defaults to 0.

    Yields:
        np.ndarray: Boolean masks, ``True`` where updated, of the
        consecutive pieces of the block.
    """
    if chunk % 4 or HOST_BLOCK % chunk:
        raise ValueError('`chunk` must be a multiple of 4 dividing '
                         f'{HOST_BLOCK}, but got {chunk!r}')
    start = block * HOST_BLOCK
    stop = min(num, start + HOST_BLOCK)
    threshold = masks.bulk_threshold()
    if threshold >= BULK_LEVELS:
        for begin in range(start, stop, chunk):
            yield np.zeros(min(chunk, stop - begin), dtype=bool)
        return
    bits = np.random.SFC64(
        np.random.SeedSequence(
            masks.sub_seed(step, substream), spawn_key=(block, )))
    for begin in range(start, stop, chunk):
        size = min(chunk, stop - begin)
        # 16 random bits per fragment, read as int16 (uniform over
        # [-2**15, 2**15)): numpy compares int16 faster than uint16.
        draws = bits.random_raw((size + 3) // 4).view(np.int16)[:size]
        yield draws >= threshold - (1 << 15)


def host_update_mask(masks: FragmentMaskGenerator,
                     step: int,
                     num: int,
                     substream: int = 0) -> np.ndarray:
    """All the host update masks of a step, as one boolean array.

    Args:
        masks (FragmentMaskGenerator): Keys the draws.
        step (int): The update count of the teacher.
        num (int): The number of fragments.
        substream (int): As in :func:`host_block_masks`. Defaults to 0.
    """
    blocks = [
        mask for block in range(-(-num // HOST_BLOCK))
        for mask in host_block_masks(
            masks, step, num, block, substream=substream)
    ]
    return np.concatenate(blocks) if blocks else np.zeros(0, bool)


def _run_threads(work: Callable[[list], int], units: list,
                 elements: int) -> int:
    """Run ``work`` on interleaved shares of ``units`` on up to as many
    threads as torch's intra-op pool (at most one per ``HOST_BLOCK`` of the
    ``elements`` touched), and sum what it returns. numpy releases the GIL
    in its loops and in its random draws, so the threads run in parallel."""
    workers = min(torch.get_num_threads(), len(units),
                  -(-elements // HOST_BLOCK))
    if workers <= 1:
        return work(units)
    with ThreadPoolExecutor(workers, thread_name_prefix='mmsts') as pool:
        shares = [units[k::workers] for k in range(workers)]
        return sum(pool.map(work, shares))


class HostFineUpdate(FineUpdate):
    """The ``'element'`` STS update of float CPU tensors.

    Torch's CPU path would need a teacher-sized random draw, a float weight
    tensor and several passes over memory. Here each thread draws whole
    blocks of the mask (:data:`HOST_BLOCK` fragments, each block from its own
    counter-derived generator, so the masks do not depend on the number of
    threads) and applies them in cache-sized pieces: the teacher and the
    student are read once, the teacher written once, and no teacher-sized
    buffer is allocated.

    ``t += w * (s - t)`` with ``w = momentum`` where the element is updated,
    else 0, as ``torch.lerp`` with a 0/``momentum`` weight: a preserved
    element is unchanged unless the student holds NaN/Inf there, which only
    ``nonfinite='none'`` lets through. ``momentum=1`` selects bits instead:
    updated elements are exact copies and preserved ones are never touched.
    (``'channel'`` masks are one draw per row; a dense torch lerp applies
    them faster than gathering rows here, see
    :class:`~mmsts.smoothing.fine.TorchFineUpdate`.)

    The guard (a :class:`~mmsts.smoothing.guards.HostGuard` or none) checks
    the student before any of this; a skipped step still draws its mask, to
    count the fragments drawn as the other kernels do.

    Args:
        masks (FragmentMaskGenerator): Draws the masks.
    """

    def __init__(self, masks: FragmentMaskGenerator) -> None:
        super().__init__(masks, 'element')
        self._plans: Dict[tuple, list] = {}

    @staticmethod
    def supports(t_list: List[Tensor], s_list: List[Tensor]) -> bool:
        """Whether the tensors of a group can be updated on the host: float32
        or float64, contiguous, on the CPU.

        Args:
            t_list (list[Tensor]): The teacher's tensors of the group.
            s_list (list[Tensor]): The student's tensors of the group.
        """
        return all(
            t.device.type == 'cpu' and t.is_contiguous() and s.is_contiguous()
            and t.dtype in (torch.float32, torch.float64)
            for t, s in zip(t_list, s_list))

    def __call__(self, teacher, student, momentum, step, substream, guard):
        updated = []

        def update(student: List[Tensor], scale) -> None:
            updated.append(
                self._update(teacher, student, momentum * scale, step,
                             substream))

        if not guard(student, step, update):
            sizes = split_sizes(teacher, self.granularity)
            mask = host_update_mask(self.masks, step, sum(sizes), substream)
            return int(np.count_nonzero(mask))
        return updated[0]

    def _update(self, t_list: List[Tensor], s_list: List[Tensor],
                momentum: float, step: int, substream: int) -> int:
        """Update ``t_list`` in place; return the number of updated
        fragments."""
        teacher = [t.detach().numpy().reshape(-1) for t in t_list]
        student = [s.detach().numpy().reshape(-1) for s in s_list]
        updated = self._element(teacher, student, momentum, step, substream)
        # numpy wrote behind autograd's back.
        torch.autograd.graph.increment_version(t_list)
        return updated

    # ------------------------------------------------------------------
    # 'element'
    # ------------------------------------------------------------------
    def _element_plan(self, sizes: Tuple[int, ...]) -> list:
        """For each piece of ``_HOST_CHUNK`` elements of the concatenated
        tensors: ``(tensor, begin, end, offset in the piece)`` runs."""
        plan = self._plans.get(sizes)
        if plan is not None:
            return plan
        starts = np.cumsum((0, ) + sizes).tolist()
        plan, index = [], 0
        for begin in range(0, starts[-1], _HOST_CHUNK):
            end = min(begin + _HOST_CHUNK, starts[-1])
            runs = []
            while index < len(sizes) and starts[index] < end:
                lo, hi = max(begin, starts[index]), min(end, starts[index + 1])
                if hi > lo:
                    runs.append((index, lo - starts[index], hi - starts[index],
                                 lo - begin))
                if starts[index + 1] > end:
                    break
                index += 1
            plan.append(runs)
        if len(self._plans) >= 8:  # a teacher has one or two groups
            self._plans.clear()
        self._plans[sizes] = plan
        return plan

    def _element(self, teacher, student, momentum, step, substream) -> int:
        sizes = tuple(t.size for t in teacher)
        num = sum(sizes)
        plan = self._element_plan(sizes)
        per_block = HOST_BLOCK // _HOST_CHUNK
        dtype = teacher[0].dtype
        momentum = dtype.type(momentum)
        as_int = _HOST_INT[dtype]

        def work(blocks) -> int:
            scratch = np.empty(_HOST_CHUNK, dtype)
            weight = np.empty(_HOST_CHUNK, dtype)
            updated = 0
            for block in blocks:
                masks = host_block_masks(self.masks, step, num, block,
                                         _HOST_CHUNK, substream)
                runs_of = plan[block * per_block:(block + 1) * per_block]
                for mask, runs in zip(masks, runs_of):
                    updated += int(np.count_nonzero(mask))
                    if momentum == 1:
                        _select_runs(teacher, student, runs, mask, scratch,
                                     weight.view(as_int))
                    else:
                        _lerp_runs(teacher, student, runs, mask, momentum,
                                   scratch, weight)
            return updated

        return _run_threads(work, list(range(-(-num // HOST_BLOCK))), num)


def _lerp_runs(teacher, student, runs, mask, momentum, scratch,
               weight) -> None:
    """``t += w * (s - t)`` on the runs of one piece of flat tensors,
    ``w`` = ``momentum`` where ``mask`` else 0."""
    weight = weight[:mask.size]
    np.copyto(weight, mask)
    np.multiply(weight, momentum, out=weight)
    for index, begin, end, at in runs:
        t = teacher[index][begin:end]
        diff = scratch[:end - begin]
        np.subtract(student[index][begin:end], t, out=diff)
        np.multiply(diff, weight[at:at + end - begin], out=diff)
        np.add(t, diff, out=t)


def _select_runs(teacher, student, runs, mask, scratch, select) -> None:
    """``t = s`` where ``mask`` on the runs of one piece of flat tensors,
    bit-exact: ``t ^= (t ^ s) & select``, ``select`` all ones where
    updated."""
    select = select[:mask.size]
    np.copyto(select, mask)
    np.negative(select, out=select)
    bits = scratch.view(select.dtype)
    for index, begin, end, at in runs:
        t = teacher[index][begin:end].view(select.dtype)
        flip = bits[:end - begin]
        np.bitwise_xor(
            t, student[index][begin:end].view(select.dtype), out=flip)
        np.bitwise_and(flip, select[at:at + end - begin], out=flip)
        np.bitwise_xor(t, flip, out=t)

"""The Spatial-Temporal Smoothing (STS) update on lists of tensors.

At every step each fragment of the teacher is, independently, preserved with
probability ``preserve_prob`` (the spatial ensemble) or moved toward the
student by a temporal moving average:

    teacher = teacher                                      with prob. p
    teacher = (1 - momentum) * teacher + momentum * student   otherwise

``momentum`` is the weight given to the *student* (MMEngine convention; the
paper's teacher weight m = 0.99 is ``momentum=0.01``). Special cases: plain
EMA / TMA is ``preserve_prob=0``; Spatial Ensemble alone (SE) is
``momentum=1`` (the updated fragments are copied from the student).

A fragment is one whole tensor in the official code (``granularity='tensor'``,
the default). ``'channel'`` (one output channel, i.e. one slice along dim 0)
and ``'element'`` are extensions of mmsts, not from the paper.
"""
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .masks import HOST_BLOCK, FragmentMaskGenerator, split_sizes
from .schedules import (ConstantMomentum, MomentumSchedule,
                        check_unit_interval)

GRANULARITIES = ('tensor', 'channel', 'element')
NONFINITE_POLICIES = ('skip', 'raise', 'none')

_INT_VIEW = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


class NonFiniteStudentError(FloatingPointError):
    """Raised when the student holds NaN/Inf and ``nonfinite='raise'``."""


@torch.no_grad()
def relative_distance(teacher: Sequence[Tensor],
                      student: Sequence[Tensor]) -> Tensor:
    """``||teacher - student|| / ||student||`` over all tensors, as a 0-dim
    tensor (no host synchronisation)."""
    diff = torch._foreach_sub(list(teacher), list(student))
    num = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(diff)))
    den = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(
        list(student))))
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


#: Elements of one in-cache piece of the CPU fine update (a multiple of 4
#: dividing ``HOST_BLOCK``).
_HOST_CHUNK = 1 << 16
_HOST_INT = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


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


class HostFineUpdate:
    """The ``'channel'``/``'element'`` STS update of float CPU tensors.

    Torch's CPU path would need a teacher-sized random draw, a float weight
    tensor and several passes over memory. Here each thread draws whole
    blocks of the mask (:data:`~mmsts.smoothing.masks.HOST_BLOCK`
    fragments, each block from its own counter-derived generator, so the
    masks do not depend on the number of threads) and applies them in
    cache-sized pieces: the teacher and the student are read once, the
    teacher written once, and no teacher-sized buffer is allocated.

    * ``'element'``: ``t += w * (s - t)`` with ``w = momentum`` where the
      element is updated, else 0, so a preserved element is unchanged
      (``momentum=1`` selects bits, so updated elements are exact copies).
    * ``'channel'``: only the selected rows are gathered, moved toward the
      student and scattered back.

    Args:
        masks (FragmentMaskGenerator): Draws the masks.
        granularity (str): ``'channel'`` or ``'element'``.
    """

    def __init__(self, masks: FragmentMaskGenerator, granularity: str) -> None:
        self.masks = masks
        self.granularity = granularity
        self._plans: Dict[tuple, list] = {}

    @staticmethod
    def supports(t_list: List[Tensor], s_list: List[Tensor]) -> bool:
        """Whether the tensors of a group can be updated on the host."""
        return all(
            t.device.type == 'cpu' and t.is_contiguous()
            and s.is_contiguous() and t.dtype in (torch.float32,
                                                  torch.float64)
            for t, s in zip(t_list, s_list))

    def __call__(self, t_list: List[Tensor], s_list: List[Tensor],
                 momentum: float, step: int, substream: int) -> int:
        """Update ``t_list`` in place; return the number of updated
        fragments."""
        teacher = [t.detach().numpy() for t in t_list]
        student = [s.detach().numpy() for s in s_list]
        if self.granularity == 'element':
            updated = self._element(teacher, student, momentum, step,
                                    substream)
        else:
            updated = self._channel(teacher, student, momentum, step,
                                    substream)
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
                    runs.append((index, lo - starts[index],
                                 hi - starts[index], lo - begin))
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
                masks = self.masks.host_block_masks(step, num, block,
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

    # ------------------------------------------------------------------
    # 'channel'
    # ------------------------------------------------------------------
    def _channel(self, teacher, student, momentum, step, substream) -> int:
        teacher = [t.reshape(t.shape[0] if t.ndim else 1, -1) for t in teacher]
        student = [s.reshape(t.shape) for s, t in zip(student, teacher)]
        rows = [t.shape[0] for t in teacher]
        mask = self.masks.host_update_mask(step, sum(rows), substream)
        starts = np.cumsum([0] + rows).tolist()
        units = []
        for index, t in enumerate(teacher):
            chosen = np.flatnonzero(mask[starts[index]:starts[index + 1]])
            per_unit = max(1, _HOST_CHUNK // max(t.shape[1], 1))
            units.extend((index, chosen[i:i + per_unit])
                         for i in range(0, chosen.size, per_unit))
        dtype = teacher[0].dtype
        momentum = dtype.type(momentum)

        def work(share) -> int:
            for index, chosen in share:
                t, s = teacher[index], student[index]
                if momentum == 1:
                    t[chosen] = np.take(s, chosen, axis=0)
                    continue
                old = np.take(t, chosen, axis=0)
                diff = np.take(s, chosen, axis=0)
                np.subtract(diff, old, out=diff)
                np.multiply(diff, momentum, out=diff)
                np.add(old, diff, out=old)
                t[chosen] = old
            return 0

        _run_threads(work, units, sum(t.size for t in teacher))
        return int(np.count_nonzero(mask))


def _lerp_runs(teacher, student, runs, mask, momentum, scratch,
               weight) -> None:
    """``t += w * (s - t)`` on the runs of one piece, ``w`` = ``momentum``
    where ``mask`` else 0."""
    weight = weight[:mask.size]
    np.copyto(weight, mask)
    np.multiply(weight, momentum, out=weight)
    for index, begin, end, at in runs:
        t = teacher[index].reshape(-1)[begin:end]
        diff = scratch[:end - begin]
        np.subtract(student[index].reshape(-1)[begin:end], t, out=diff)
        np.multiply(diff, weight[at:at + end - begin], out=diff)
        np.add(t, diff, out=t)


def _select_runs(teacher, student, runs, mask, scratch, select) -> None:
    """``t = s`` where ``mask`` on the runs of one piece, bit-exact:
    ``t ^= (t ^ s) & select`` with ``select`` all ones where updated."""
    select = select[:mask.size]
    np.copyto(select, mask)
    np.negative(select, out=select)
    bits = scratch.view(select.dtype)
    for index, begin, end, at in runs:
        t = teacher[index].reshape(-1)[begin:end].view(select.dtype)
        flip = bits[:end - begin]
        np.bitwise_xor(t, student[index].reshape(-1)[begin:end].view(
            select.dtype), out=flip)
        np.bitwise_and(flip, select[at:at + end - begin], out=flip)
        np.bitwise_xor(t, flip, out=t)


class SpatialTemporalSmoother:
    """Applies the STS rule to a teacher's tensors, in fused passes.

    The update never synchronises host and device: fragment selection for
    ``'tensor'`` granularity happens on the host from a counter-based
    generator, finer masks are drawn on the tensors' device, and the
    non-finite guard works on device flags.

    Args:
        preserve_prob (float): Probability ``p`` that a fragment is preserved
            at a step, in [0, 1]. The paper uses 0.7 (BYOL) and 0.5 (MoCo v2,
            FixMatch). 0 gives plain EMA (TMA).
        momentum (float | MomentumSchedule): Weight given to the student when
            a fragment is updated, in [0, 1] (MMEngine convention: the paper's
            m = 0.99 is ``momentum=0.01``; 1 copies the student, i.e. Spatial
            Ensemble alone). A float means a constant momentum.
        granularity (str): What a fragment is: ``'tensor'`` (the official
            code), ``'channel'`` or ``'element'`` (mmsts extensions).
            Defaults to ``'tensor'``.
        seed (int): Seed of the mask generator; masks are a pure function of
            ``(seed, stream, step)``. Defaults to 0.
        stream (int): Distinguishes teachers of one run. Defaults to 0.
        nonfinite (str): What to do when the student holds NaN/Inf:
            ``'skip'`` the update (and count it, see :meth:`pop_statistics`),
            ``'raise'`` a :class:`NonFiniteStudentError`, or ``'none'`` (no
            check, fastest). On an accelerator the step is skipped on device
            and the error is raised when the statistics are read, so that no
            step synchronises. Defaults to ``'skip'``.
    """

    def __init__(self,
                 preserve_prob: float = 0.5,
                 momentum: Union[float, MomentumSchedule] = 0.01,
                 granularity: str = 'tensor',
                 seed: int = 0,
                 stream: int = 0,
                 nonfinite: str = 'skip') -> None:
        self.preserve_prob = check_unit_interval('preserve_prob',
                                                 preserve_prob)
        if not isinstance(momentum, MomentumSchedule):
            momentum = ConstantMomentum(momentum)
        self.schedule = momentum
        if granularity not in GRANULARITIES:
            raise ValueError(f'`granularity` must be one of {GRANULARITIES}, '
                             f'but got {granularity!r}')
        self.granularity = granularity
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f'`nonfinite` must be one of '
                             f'{NONFINITE_POLICIES}, but got {nonfinite!r}')
        self.nonfinite = nonfinite
        self.masks = FragmentMaskGenerator(self.preserve_prob, seed, stream)
        self._host_update = HostFineUpdate(self.masks, granularity)
        self.last_momentum: Optional[float] = None
        self._reset_statistics()

    @property
    def seed(self) -> int:
        """The seed of the mask generator."""
        return self.masks.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.masks.seed = int(value)

    def momentum_at(self, step: int, total_steps: Optional[int] = None):
        """The momentum (weight on the student) at ``step``."""
        return self.schedule(step, total_steps)

    # ------------------------------------------------------------------
    # The update
    # ------------------------------------------------------------------
    @torch.no_grad()
    def step(self,
             teacher: Sequence[Tensor],
             student: Sequence[Tensor],
             step: int,
             total_steps: Optional[int] = None) -> None:
        """Update ``teacher`` in place toward ``student``.

        Args:
            teacher (Sequence[Tensor]): The teacher's tensors, updated in
                place.
            student (Sequence[Tensor]): The student's tensors, in the same
                order and of the same shapes.
            step (int): The update count; it keys the masks and the
                momentum schedule.
            total_steps (int, optional): Length of training in steps, for
                schedules that need it.
        """
        momentum = self.momentum_at(step, total_steps)
        self.last_momentum = momentum
        if momentum == 0.0 or self.preserve_prob == 1.0 or not teacher:
            self._record_fraction(0.0, len(teacher))
            return
        if self.granularity == 'tensor':
            flags = self.masks.update_flags(step, len(teacher))
            self._record_fraction(float(flags.sum()), len(teacher))
            chosen = np.flatnonzero(flags).tolist()
            for t_list, s_list, _ in self._groups(teacher, student, chosen):
                self._apply(t_list, s_list, momentum, weights=None)
        else:
            for group, (t_list, s_list, _) in enumerate(
                    self._groups(teacher, student, range(len(teacher)))):
                self._apply_fine(t_list, s_list, momentum, step, group)

    def _groups(self, teacher, student,
                indices) -> List[Tuple[List[Tensor], List[Tensor], tuple]]:
        """Split the chosen pairs by (device, dtype), as foreach kernels need."""
        groups: Dict[tuple, Tuple[list, list]] = defaultdict(lambda: ([], []))
        for i in indices:
            t = teacher[i]
            t_list, s_list = groups[(t.device, t.dtype)]
            t_list.append(t)
            s_list.append(student[i])
        out = []
        for key, (t_list, s_list) in groups.items():
            if any(s.device != t.device or s.dtype != t.dtype
                   for s, t in zip(s_list, t_list)):
                s_list = [s.to(t) for s, t in zip(s_list, t_list)]
            out.append((t_list, s_list, key))
        return out

    def _apply_fine(self, t_list: List[Tensor], s_list: List[Tensor],
                    momentum: float, step: int, group: int) -> None:
        """The ``'channel'``/``'element'`` update of one (device, dtype)
        group: on the host (:class:`HostFineUpdate`) for float CPU tensors,
        else with torch kernels on the tensors' device."""
        num = sum(split_sizes(t_list, self.granularity))
        if self.preserve_prob == 0.0:
            # Every fragment is updated, whatever the draws: plain lerp.
            self._record_fraction(num, num)
            self._apply(t_list, s_list, momentum, weights=None)
            return
        if self._force_sync_free or not HostFineUpdate.supports(
                t_list, s_list):
            weights = self._fine_weights(t_list, step, group)
            self._apply(t_list, s_list, momentum, weights)
            return
        if self.nonfinite != 'none' and self._guard(s_list)[0] is None:
            # Skipped; count the fragments drawn, as the other paths do.
            mask = self.masks.host_update_mask(step, num, substream=group)
            self._record_fraction(int(np.count_nonzero(mask)), num)
            return
        updated = self._host_update(t_list, s_list, momentum, step, group)
        self._record_fraction(updated, num)

    def _fine_weights(self, t_list: List[Tensor], step: int,
                      group: int) -> List[Tensor]:
        """0/1 update masks (in the teacher dtype), one per tensor, shaped to
        broadcast against it."""
        sizes = split_sizes(t_list, self.granularity)
        flat = self.masks.bulk_update_mask(
            step, sum(sizes), t_list[0].device, substream=group)
        # count_nonzero: a bool sum is an order of magnitude slower on CPU.
        self._record_fraction(torch.count_nonzero(flat), sum(sizes))
        flat = flat.to(t_list[0].dtype)
        weights = []
        for w, t in zip(flat.split(sizes), t_list):
            if self.granularity == 'channel':
                w = w.view((-1, ) + (1, ) * (t.dim() - 1)) if t.dim() else \
                    w.view(())
            else:
                w = w.view_as(t)
            weights.append(w)
        return weights

    def _apply(self, t_list: List[Tensor], s_list: List[Tensor],
               momentum: float, weights: Optional[List[Tensor]]) -> None:
        """``t = t + momentum * weight * (s - t)`` on one (device, dtype)
        group, in a few fused kernels."""
        if not t_list:
            return
        ok = None
        if self.nonfinite != 'none':
            s_list, ok = self._guard(s_list)
            if s_list is None:  # found on the host: skip this group
                return
        if weights is None and ok is None:
            if momentum == 1.0:
                torch._foreach_copy_(t_list, s_list)
            else:
                torch._foreach_lerp_(t_list, s_list, momentum)
            return
        if weights is None:
            # One 0-dim device weight, shared by every tensor of the group.
            scale = ok.to(t_list[0].dtype) * momentum
            diff = torch._foreach_sub(s_list, t_list)
            torch._foreach_mul_(diff, scale)
            torch._foreach_add_(t_list, diff)
            return
        if ok is not None:
            momentum = ok.to(t_list[0].dtype) * momentum
        torch._foreach_mul_(weights, momentum)
        torch._foreach_lerp_(t_list, s_list, weights)

    def _guard(self, s_list: List[Tensor]):
        """Detect NaN/Inf in the student without a host sync.

        Returns the student tensors to use and a 0-dim bool device tensor
        ``ok``. On an accelerator the student is bit-masked to zeros when not
        finite (integer multiply, so ``0 * NaN`` cannot appear) and the
        caller scales its weights by ``ok``. On CPU, where reading a flag
        costs nothing, the policy is applied at once: ``(None, None)`` means
        "skip", ``(s_list, None)`` "all finite".
        """
        total = torch.stack(torch._foreach_norm(s_list)).sum()
        ok = torch.isfinite(total)
        if s_list[0].device.type == 'cpu' and not self._force_sync_free:
            if bool(ok):
                return s_list, None
            self._nonfinite_steps += 1
            if self.nonfinite == 'raise':
                raise NonFiniteStudentError(
                    'The student holds NaN/Inf values; the teacher update '
                    "was skipped (nonfinite='raise').")
            return None, None
        # Stays on the device: no sync until pop_statistics().
        self._nonfinite_steps = self._nonfinite_steps + (~ok).long()
        int_dtype = _INT_VIEW.get(s_list[0].dtype)
        if int_dtype is None:
            return s_list, ok
        bits = torch._foreach_mul([s.view(int_dtype) for s in s_list],
                                  ok.to(int_dtype))
        return [b.view(s.dtype) for b, s in zip(bits, s_list)], ok

    # ------------------------------------------------------------------
    # Statistics
    # ------------------------------------------------------------------
    #: Force the accelerator (sync-free) code path on CPU; for tests.
    _force_sync_free = False

    def _reset_statistics(self) -> None:
        self._updated: Union[float, Tensor] = 0.0
        self._fragments = 0
        self._nonfinite_steps: Union[int, Tensor] = 0

    def _record_fraction(self, updated, total: int) -> None:
        self._updated = self._updated + updated
        self._fragments += total

    def pop_statistics(self) -> Dict[str, float]:
        """Read and reset the statistics gathered since the last call.

        This synchronises host and device once; call it at log intervals.

        Returns:
            dict: ``momentum`` (of the last step), ``update_fraction``
            (updated fragments / fragments), ``nonfinite_steps`` (skipped
            steps).

        Raises:
            NonFiniteStudentError: if ``nonfinite='raise'`` and a step was
                skipped on device since the last call.
        """
        fraction = float(self._updated) / max(self._fragments, 1)
        nonfinite = int(self._nonfinite_steps)
        self._reset_statistics()
        if nonfinite and self.nonfinite == 'raise':
            raise NonFiniteStudentError(
                f'The student held NaN/Inf values at {nonfinite} step(s); '
                "those teacher updates were skipped (nonfinite='raise').")
        stats = dict(update_fraction=fraction, nonfinite_steps=nonfinite)
        if self.last_momentum is not None:
            stats['momentum'] = float(self.last_momentum)
        return stats

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(preserve_prob={self.preserve_prob}, '
                f'momentum={self.schedule!r}, '
                f'granularity={self.granularity!r}, seed={self.seed}, '
                f'stream={self.masks.stream}, nonfinite={self.nonfinite!r})')

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
import math
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .devices import on_host
from .fine import FineUpdate, TorchFineUpdate, lerp_
from .guards import (NONFINITE_POLICIES, Guard, NonFiniteCounter,
                     NonFiniteStudentError, build_guard)
from .host_fine import HostFineUpdate
from .masks import FragmentMaskGenerator, split_sizes
from .schedules import (ConstantMomentum, MomentumSchedule,
                        check_unit_interval)

GRANULARITIES = ('tensor', 'channel', 'element')

__all__ = [
    'GRANULARITIES', 'NONFINITE_POLICIES', 'NonFiniteStudentError',
    'SpatialTemporalSmoother', 'relative_distance'
]


#: Tensors copied from the student at a step: ``(dst, src)``.
_Copies = Tuple[List[Tensor], List[Tensor]]


class _CopyingGuard(Guard):
    """A guard that also copies ``src`` into ``dst`` at the steps it lets
    through: one check reads the student's tensors and ``src`` together,
    and the update and the copies are applied or skipped together.

    Args:
        guard (Guard): The guard of the group.
        dst (list[Tensor]): Written in place.
        src (list[Tensor]): Same shapes, device and dtype.
    """

    def __init__(self, guard: Guard, dst: List[Tensor],
                 src: List[Tensor]) -> None:
        super().__init__(guard.policy, guard.counter)
        self.guard, self.dst, self.src = guard, dst, src

    def __call__(self, student, step, update):
        num = len(student)

        def update_and_copy(checked: List[Tensor], scale) -> None:
            update(checked[:num], scale)
            lerp_(self.dst, checked[num:], scale)

        return self.guard(list(student) + self.src, step, update_and_copy)


def _matching(teacher: List[Tensor], student: List[Tensor]) -> List[Tensor]:
    """``student`` on the devices and in the dtypes of ``teacher`` (the
    fused kernels need both to match), converted only where they differ."""
    if all(s.dtype is t.dtype and s.device == t.device
           for s, t in zip(student, teacher)):
        return student
    return [s.to(t) for s, t in zip(student, teacher)]


#: Elements per piece of the host's distance computation: the difference of
#: a piece stays in the CPU's cache instead of going through memory.
_DISTANCE_PIECE = 1 << 18
#: Elements per chunk of tensors in the accelerators' distance computation:
#: the differences of one chunk (or of one larger tensor) are formed at a
#: time, not a copy of the whole model (1.2 GB for 300 M float32
#: parameters).
_DEVICE_DISTANCE_CHUNK = 1 << 24


@torch.no_grad()
def relative_distance(teacher: Sequence[Tensor],
                      student: Sequence[Tensor]) -> Tensor:
    """``||teacher - student|| / ||student||`` over all tensors, as a 0-dim
    tensor (no host synchronisation on an accelerator).

    On the host the differences are formed piece by piece in one small
    buffer and read while still in the cache (a ResNet-50 took ~2 lerps on
    one thread), instead of materialising the whole difference (~5 lerps:
    allocating and faulting in a copy of the model). On an accelerator they
    are formed a chunk of tensors at a time (``_DEVICE_DISTANCE_CHUNK``
    elements, 64 MB in float32), which bounds the memory a read needs.
    """
    teacher, student = list(teacher), list(student)
    if teacher and on_host(teacher[0].device):
        return _host_relative_distance(teacher, student, _DISTANCE_PIECE)
    norms: List[Tensor] = []
    for chunk in _chunk_slices(teacher, _DEVICE_DISTANCE_CHUNK):
        norms += torch._foreach_norm(
            torch._foreach_sub(teacher[chunk], student[chunk]))
    num = torch.linalg.vector_norm(torch.stack(norms))
    den = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(student)))
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def _chunk_slices(tensors: Sequence[Tensor], budget: int) -> List[slice]:
    """Consecutive slices of ``tensors`` of at most ``budget`` elements in
    all, except a single tensor larger than that, which is a slice alone.

    Args:
        tensors (Sequence[Tensor]): The tensors, in order.
        budget (int): Elements per slice.
    """
    slices: List[slice] = []
    start = size = 0
    for i, t in enumerate(tensors):
        if size and size + t.numel() > budget:
            slices.append(slice(start, i))
            start, size = i, 0
        size += t.numel()
    if start < len(tensors):
        slices.append(slice(start, len(tensors)))
    return slices


def _host_relative_distance(teacher: List[Tensor], student: List[Tensor],
                            piece: int) -> Tensor:
    """:func:`relative_distance` on the host, in pieces of at most ``piece``
    elements; the squares of their norms are summed in double precision."""
    size = min(piece, max(t.numel() for t in teacher))
    buffers: Dict[torch.dtype, Tensor] = {}
    num = den = 0.0
    for t, s in zip(teacher, student):
        t, s = t.reshape(-1), s.reshape(-1).to(t)
        buf = buffers.get(t.dtype)
        if buf is None:
            buf = buffers[t.dtype] = t.new_empty(size)
        for start in range(0, t.numel(), piece):
            a, b = t[start:start + piece], s[start:start + piece]
            diff = torch.sub(a, b, out=buf[:a.numel()])
            num += float(torch.linalg.vector_norm(diff))**2
            den += float(torch.linalg.vector_norm(b))**2
    return torch.tensor(
        math.sqrt(num) / max(math.sqrt(den), sys.float_info.min),
        dtype=torch.float64)


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
        self._host_fine = HostFineUpdate(self.masks) \
            if granularity == 'element' else None
        self._torch_fine = TorchFineUpdate(self.masks, granularity)
        self._nonfinite = NonFiniteCounter()
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
             total_steps: Optional[int] = None,
             copies: Optional[Tuple[Sequence[Tensor],
                                    Sequence[Tensor]]] = None) -> None:
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
            copies (tuple[Sequence[Tensor], Sequence[Tensor]], optional):
                ``(dst, src)``: tensors copied from the student at this
                step as :meth:`copy_` would (e.g. BN statistics). Their
                floating point sources are checked together with the
                student's tensors of the same device and dtype, in one
                read, and the update and the copies of that group are
                applied or skipped together.
        """
        momentum = self.momentum_at(step, total_steps)
        self.last_momentum = momentum
        pending = self._copy_groups(copies or ((), ()))
        if momentum == 0.0 or self.preserve_prob == 1.0 or not teacher:
            self._record_fraction(0.0, len(teacher))
        elif self.granularity == 'tensor':
            flags = self.masks.update_flags(step, len(teacher))
            self._record_fraction(float(flags.sum()), len(teacher))
            chosen = np.flatnonzero(flags).tolist()
            for t_list, s_list in self._groups(teacher, student, chosen):
                self._lerp(t_list, s_list, momentum, step, pending)
        else:
            for group, (t_list, s_list) in enumerate(
                    self._groups(teacher, student, range(len(teacher)))):
                num = sum(split_sizes(t_list, self.granularity))
                if self.preserve_prob == 0.0:
                    # Every fragment is updated, whatever the draws.
                    self._record_fraction(num, num)
                    self._lerp(t_list, s_list, momentum, step, pending)
                    continue
                update = self._fine_update(t_list, s_list)
                updated = update(t_list, s_list, momentum, step, group,
                                 self._guard(t_list, pending))
                self._record_fraction(updated, num)
        self._copy_pending(pending, step)

    def _groups(self, teacher, student,
                indices) -> List[Tuple[List[Tensor], List[Tensor]]]:
        """Split the chosen pairs by (device, dtype), for the fused
        kernels."""
        groups: Dict[tuple, Tuple[list, list]] = defaultdict(lambda: ([], []))
        for i in indices:
            t = teacher[i]
            t_list, s_list = groups[(t.device, t.dtype)]
            t_list.append(t)
            s_list.append(student[i])
        return [(t_list, _matching(t_list, s_list))
                for t_list, s_list in groups.values()]

    def _guard(self, t_list: List[Tensor],
               pending: Dict[tuple, _Copies]) -> Guard:
        """The non-finite guard of the group ``t_list`` (checks on the host,
        a device flag on an accelerator), extended with the ``pending``
        copies of the group's device and dtype, which it takes."""
        t = t_list[0]
        guard = build_guard(self.nonfinite, t.device, self._nonfinite)
        copies = pending.pop((t.device, t.dtype), None)
        return _CopyingGuard(guard, *copies) if copies else guard

    def _fine_update(self, t_list: List[Tensor],
                     s_list: List[Tensor]) -> FineUpdate:
        """The ``'channel'``/``'element'`` kernel of one (device, dtype)
        group: numpy for ``'element'`` on float CPU tensors, else torch
        kernels on the tensors' device."""
        if self._host_fine is not None and on_host(
                t_list[0].device) and HostFineUpdate.supports(t_list, s_list):
            return self._host_fine
        return self._torch_fine

    def _lerp(self, t_list: List[Tensor], s_list: List[Tensor],
              momentum: float, step: int,
              pending: Dict[tuple, _Copies]) -> None:
        """``t += momentum * (s - t)`` on one (device, dtype) group, in one
        fused kernel, under the non-finite guard."""
        self._guard(t_list, pending)(
            s_list, step, lambda s, scale: lerp_(t_list, s, scale * momentum))

    @torch.no_grad()
    def copy_(self, dst: Sequence[Tensor], src: Sequence[Tensor],
              step: int) -> None:
        """Copy ``src`` into ``dst`` (e.g. BN statistics from the student to
        the teacher) under the same NaN/Inf policy as :meth:`step`: float
        tensors are not copied at a step where ``src`` holds NaN/Inf.

        Args:
            dst (Sequence[Tensor]): Tensors written in place.
            src (Sequence[Tensor]): Tensors of the same shapes.
            step (int): The update count; a step counts once in
                ``nonfinite_steps`` however many groups were skipped.
        """
        self._copy_pending(self._copy_groups((dst, src)), step)

    @staticmethod
    def _copy_groups(copies: Tuple[Sequence[Tensor], Sequence[Tensor]]
                     ) -> Dict[tuple, _Copies]:
        """Copy the non-floating point pairs of ``copies = (dst, src)`` (no
        check needed) and group the others by the destination's (device,
        dtype), for the guards."""
        groups: Dict[tuple, _Copies] = {}
        others: _Copies = ([], [])
        for d, s in zip(*copies):
            if d.dtype.is_floating_point:
                pair = groups.setdefault((d.device, d.dtype), ([], []))
            else:
                pair = others
            pair[0].append(d)
            pair[1].append(s)
        if others[0]:  # copy_ converts dtype and device itself
            torch._foreach_copy_(*others)
        return {
            key: (d_list, _matching(d_list, s_list))
            for key, (d_list, s_list) in groups.items()
        }

    def _copy_pending(self, pending: Dict[tuple, _Copies], step: int) -> None:
        """The copies no update group took, each group under its guard."""
        for d_list, s_list in pending.values():
            self._guard(d_list, {})(
                s_list, step, lambda s, scale, d=d_list: lerp_(d, s, scale))

    # ------------------------------------------------------------------
    # Statistics
    # ------------------------------------------------------------------
    def _reset_statistics(self) -> None:
        self._updated: Union[float, Tensor] = 0.0
        self._fragments = 0

    def _record_fraction(self, updated, total: int) -> None:
        self._updated = self._updated + updated
        self._fragments += total

    def pop_statistics(self) -> Dict[str, float]:
        """Read and reset the statistics gathered since the last call.

        This synchronises host and device once; call it at log intervals.

        Returns:
            dict: ``nonfinite_steps`` (skipped steps) and, once a step
            has run, ``momentum`` (of the last step) and
            ``update_fraction`` (updated fragments / fragments drawn; absent
            when no fragment was drawn since the last call, e.g. after only
            a model's initial copy).

        Raises:
            NonFiniteStudentError: if ``nonfinite='raise'`` and a step was
                skipped on device since the last call.
        """
        fraction = float(self._updated) / self._fragments \
            if self._fragments else None
        nonfinite = self._nonfinite.pop()
        self._reset_statistics()
        if nonfinite and self.nonfinite == 'raise':
            raise NonFiniteStudentError(
                f'The student held NaN/Inf values at {nonfinite} step(s); '
                "those teacher updates were skipped (nonfinite='raise').")
        stats = dict(nonfinite_steps=nonfinite)
        if fraction is not None:
            stats['update_fraction'] = fraction
        if self.last_momentum is not None:
            stats['momentum'] = float(self.last_momentum)
        return stats

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(preserve_prob={self.preserve_prob}, '
                f'momentum={self.schedule!r}, '
                f'granularity={self.granularity!r}, seed={self.seed}, '
                f'stream={self.masks.stream}, nonfinite={self.nonfinite!r})')

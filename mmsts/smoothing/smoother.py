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
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .host_kernels import HostFineUpdate
from .masks import FragmentMaskGenerator, split_sizes
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
            for t_list, s_list in self._groups(teacher, student, chosen):
                self._apply(t_list, s_list, momentum, step, weights=None)
        else:
            for group, (t_list, s_list) in enumerate(
                    self._groups(teacher, student, range(len(teacher)))):
                self._apply_fine(t_list, s_list, momentum, step, group)

    def _groups(self, teacher, student,
                indices) -> List[Tuple[List[Tensor], List[Tensor]]]:
        """Split the chosen pairs by (device, dtype), as foreach kernels need."""
        groups: Dict[tuple, Tuple[list, list]] = defaultdict(lambda: ([], []))
        for i in indices:
            t = teacher[i]
            t_list, s_list = groups[(t.device, t.dtype)]
            t_list.append(t)
            s_list.append(student[i])
        out = []
        for t_list, s_list in groups.values():
            if any(s.device != t.device or s.dtype != t.dtype
                   for s, t in zip(s_list, t_list)):
                s_list = [s.to(t) for s, t in zip(s_list, t_list)]
            out.append((t_list, s_list))
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
            self._apply(t_list, s_list, momentum, step, weights=None)
            return
        if self._force_sync_free or not HostFineUpdate.supports(
                t_list, s_list):
            weights = self._fine_weights(t_list, step, group)
            self._apply(t_list, s_list, momentum, step, weights)
            return
        if self.nonfinite != 'none' and self._guard(s_list,
                                                    step)[0] is None:
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
               momentum: float, step: int,
               weights: Optional[List[Tensor]]) -> None:
        """``t = t + momentum * weight * (s - t)`` on one (device, dtype)
        group, in a few fused kernels."""
        if not t_list:
            return
        ok = None
        if self.nonfinite != 'none':
            s_list, ok = self._guard(s_list, step)
            if s_list is None:  # found on the host: skip this group
                return
        if weights is None and ok is None:
            if momentum == 1.0:
                torch._foreach_copy_(t_list, s_list)
            else:
                torch._foreach_lerp_(t_list, s_list, momentum)
            return
        if weights is None:
            # One 0-dim device weight, shared by every tensor of the group;
            # lerp is exact at both ends (0 keeps, 1 copies).
            scale = ok.to(t_list[0].dtype) * momentum
            torch._foreach_lerp_(t_list, s_list, [scale] * len(t_list))
            return
        if ok is not None:
            momentum = ok.to(t_list[0].dtype) * momentum
        torch._foreach_mul_(weights, momentum)
        torch._foreach_lerp_(t_list, s_list, weights)

    def _guard(self, s_list: List[Tensor], step: int):
        """Detect NaN/Inf in the student without a host sync.

        Returns the student tensors to use and a 0-dim bool device tensor
        ``ok``. On an accelerator the student is bit-masked to zeros when not
        finite (integer multiply, so ``0 * NaN`` cannot appear) and the
        caller scales its weights by ``ok``. On CPU, where reading a flag
        costs nothing, the policy is applied at once: ``(None, None)`` means
        "skip", ``(s_list, None)`` "all finite".
        """
        if s_list[0].device.type == 'cpu' and not self._force_sync_free:
            # A sum is NaN/Inf iff an element is (or the sum overflows,
            # beyond 3e38); torch's CPU sum is vectorised and threaded, ~3x
            # faster than _foreach_norm.
            ok = torch.isfinite(torch.stack([s.sum() for s in s_list]).sum())
            self._note_finite(bool(ok), step)
            if bool(ok):
                return s_list, None
            if self.nonfinite == 'raise':
                raise NonFiniteStudentError(
                    'The student holds NaN/Inf values; the teacher update '
                    "was skipped (nonfinite='raise').")
            return None, None
        # One fused kernel on an accelerator; the flag stays on the device,
        # no sync until pop_statistics().
        ok = torch.isfinite(torch.stack(torch._foreach_norm(s_list)).sum())
        self._note_finite(ok, step)
        int_dtype = _INT_VIEW.get(s_list[0].dtype)
        if int_dtype is None:
            return s_list, ok
        bits = torch._foreach_mul([s.view(int_dtype) for s in s_list],
                                  ok.to(int_dtype))
        return [b.view(s.dtype) for b, s in zip(bits, s_list)], ok

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
        pairs = [(d, s.to(d)) for d, s in zip(dst, src)]
        floats = [(d, s) for d, s in pairs if d.dtype.is_floating_point]
        others = [(d, s) for d, s in pairs if not d.dtype.is_floating_point]
        if others:
            torch._foreach_copy_(*map(list, zip(*others)))
        if not floats:
            return
        d_list, s_list = map(list, zip(*floats))
        if self.nonfinite == 'none':
            torch._foreach_copy_(d_list, s_list)
            return
        self._apply(d_list, s_list, 1.0, step, weights=None)

    def _note_finite(self, ok: Union[bool, Tensor], step: int) -> None:
        """Remember whether the student was finite in a group at ``step``;
        a step counts once in ``nonfinite_steps``."""
        if step != self._flag_step:
            self._commit_flags()
            self._flag_step = step
        self._flags.append(ok)

    def _commit_flags(self) -> None:
        host_bad = not all(f for f in self._flags if isinstance(f, bool))
        device = [f for f in self._flags if isinstance(f, Tensor)]
        if device:  # stays on the device
            bad = (~torch.stack(device).all()) | host_bad
            self._nonfinite_steps = self._nonfinite_steps + bad.long()
        else:
            self._nonfinite_steps += int(host_bad)
        self._flags = []

    # ------------------------------------------------------------------
    # Statistics
    # ------------------------------------------------------------------
    #: Force the accelerator (sync-free) code path on CPU; for tests.
    _force_sync_free = False

    def _reset_statistics(self) -> None:
        self._updated: Union[float, Tensor] = 0.0
        self._fragments = 0
        self._nonfinite_steps: Union[int, Tensor] = 0
        self._flags: List[Union[bool, Tensor]] = []
        self._flag_step: Optional[int] = None

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
        self._commit_flags()
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

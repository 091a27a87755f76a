"""The non-finite guard: a teacher is never moved toward a student that holds
NaN/Inf.

A guard wraps one update of a group of tensors. :class:`HostGuard` (CPU)
checks the student at once and applies the policy: the update runs, or is
skipped, or :class:`NonFiniteStudentError` is raised. :class:`DeviceGuard`
(accelerators) never synchronises: it keeps its flag on the device, zeroes
the student's bits where it is not finite and hands the update a 0-dim
0/1 scale for its weight, so that the update is an exact no-op; under
``'raise'`` the error comes when the statistics are read.
:func:`build_guard` picks one by device type (see
:data:`~mmsts.smoothing.devices.HOST_DEVICE_TYPES`).
"""
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .devices import on_host

NONFINITE_POLICIES = ('skip', 'raise', 'none')

#: An update of a group of teacher tensors toward ``student``; ``scale``
#: (1.0, or a 0-dim 0/1 tensor of the student's dtype on an accelerator)
#: multiplies its weights.
Update = Callable[[List[Tensor], Union[float, Tensor]], None]

#: Integer dtypes of the same width, to zero a float's bits exactly.
_INT_VIEW = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
#: Tensors of fewer elements are checked together, concatenated: one call
#: per tiny tensor (biases, BN) costs more than copying them.
_SMALL = 1 << 14


class NonFiniteStudentError(FloatingPointError):
    """Raised when the student holds NaN/Inf and ``nonfinite='raise'``."""


def host_all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every element of ``tensors`` (CPU) is finite, in one read.

    A sum is NaN/Inf iff an element is (or it overflows, beyond 3e38 in
    float32); torch's CPU sum is vectorised and threaded, and reads each
    tensor once, about 3x faster than ``_foreach_norm``.

    Args:
        tensors (Sequence[Tensor]): Floating point CPU tensors.
    """
    # Most small tensors (biases, BN) are 1-D already: a reshape call per
    # tensor would cost more than their sum.
    small = [
        t if t.dim() == 1 else t.reshape(-1) for t in tensors
        if t.numel() < _SMALL
    ]
    sums = [t.sum() for t in tensors if t.numel() >= _SMALL]
    if small:
        sums.append(torch.cat(small).sum())
    return bool(torch.isfinite(torch.stack(sums).sum()))


class NonFiniteCounter:
    """Counts the steps at which a student held NaN/Inf, without
    synchronising: host flags are bools, device flags stay 0-dim device
    tensors until :meth:`pop`. A step counts once, however many groups of
    tensors (or calls, e.g. parameters and buffers) found it non-finite.
    """

    def __init__(self) -> None:
        self._count: Union[int, Tensor] = 0
        self._flags: List[Union[bool, Tensor]] = []
        self._step: Optional[int] = None

    def note(self, ok: Union[bool, Tensor], step: int) -> None:
        """Remember whether a group was finite at ``step``.

        Args:
            ok (bool | Tensor): ``True`` (or a 0-dim bool tensor that holds
                it) where the group was finite.
            step (int): The update count.
        """
        if step != self._step:
            self._commit()
            self._step = step
        self._flags.append(ok)

    def _commit(self) -> None:
        host_bad = not all(f for f in self._flags if isinstance(f, bool))
        device = [f for f in self._flags if isinstance(f, Tensor)]
        if device:  # stays on the device
            bad = (~torch.stack(device).all()) | host_bad
            self._count = self._count + bad.long()
        else:
            self._count += int(host_bad)
        self._flags = []

    def pop(self) -> int:
        """The number of non-finite steps since the last call (one host
        sync), and reset."""
        self._commit()
        count = int(self._count)
        self._count, self._step = 0, None
        return count


class Guard:
    """No check (``nonfinite='none'``): the update always runs, and a NaN in
    the student reaches the teacher. The base of the guards.

    Args:
        policy (str): One of :data:`NONFINITE_POLICIES`.
        counter (NonFiniteCounter): Where the flags are recorded.
    """

    def __init__(self, policy: str, counter: NonFiniteCounter) -> None:
        self.policy = policy
        self.counter = counter

    def __call__(self, student: List[Tensor], step: int,
                 update: Update) -> bool:
        """Run ``update`` under the guard.

        Args:
            student (list[Tensor]): The student's tensors of the group.
            step (int): The update count.
            update (Update): Called at most once, with the student's tensors
                to use and the scale of its weights.

        Returns:
            bool: Whether ``update`` was called (``False`` only where the
            host found the student non-finite and skipped the step).
        """
        update(student, 1.0)
        return True


class HostGuard(Guard):
    """Checks the student at once (CPU: reading a flag costs nothing) and
    applies the policy: ``'skip'`` the update, counted, or ``'raise'``
    :class:`NonFiniteStudentError` before the teacher is touched."""

    def __call__(self, student: List[Tensor], step: int,
                 update: Update) -> bool:
        ok = host_all_finite(student)
        self.counter.note(ok, step)
        if ok:
            update(student, 1.0)
            return True
        if self.policy == 'raise':
            raise NonFiniteStudentError(
                'The student holds NaN/Inf values; the teacher update was '
                "skipped (nonfinite='raise').")
        return False


class DeviceGuard(Guard):
    """Never synchronises (accelerators): one fused kernel computes a 0-dim
    device flag, the student's bits are multiplied by it (an integer
    multiply, so ``0 * NaN`` cannot appear) and the update gets the flag as
    the scale of its weights: a lerp with weight 0 toward zeros leaves the
    teacher bit-identical. ``'raise'`` raises when the count is read."""

    def __call__(self, student: List[Tensor], step: int,
                 update: Update) -> bool:
        ok = torch.isfinite(torch.stack(torch._foreach_norm(student)).sum())
        self.counter.note(ok, step)
        if all(s.dtype in _INT_VIEW for s in student):
            bits = torch._foreach_mul(
                [s.view(_INT_VIEW[s.dtype]) for s in student],
                ok.to(torch.int16))
            student = [b.view(s.dtype) for b, s in zip(bits, student)]
        update(student, ok.to(student[0].dtype))
        return True


def build_guard(policy: str, device: torch.device,
                counter: NonFiniteCounter) -> Guard:
    """The guard of ``policy`` for tensors on ``device``.

    Args:
        policy (str): One of :data:`NONFINITE_POLICIES`.
        device (torch.device): The device of the group of tensors.
        counter (NonFiniteCounter): Where the guard records its flags.
    """
    if policy == 'none':
        return Guard(policy, counter)
    if on_host(device):
        return HostGuard(policy, counter)
    return DeviceGuard(policy, counter)

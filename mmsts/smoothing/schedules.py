"""Momentum schedules for the teacher update.

``momentum`` follows MMEngine's convention (:class:`ExponentialMovingAverage`):
it is the weight given to the *student*, ``teacher = (1 - momentum) * teacher
+ momentum * student``. The paper's (and BYOL's) teacher weight ``m = 0.99``
is ``momentum = 0.01``.
"""
import math
import numbers
from typing import Dict, Type


def check_unit_interval(key: str, value) -> float:
    """Return ``value`` as a float, or raise if it is not in [0, 1].

    Any real number is accepted, numpy scalars (``np.float32(0.5)``,
    ``np.int64(1)``) included; booleans (``True``, ``np.bool_``) and strings
    are not numbers here.

    Args:
        key (str): The name of the option, quoted in the error.
        value: The value to check.

    Raises:
        TypeError: if ``value`` is not a real number, or is a boolean.
        ValueError: if ``value`` is NaN or outside [0, 1].
    """
    # numpy's bool_ is not a numbers.Real; Python's bool is.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f'`{key}` must be a number in [0, 1], '
                        f'but got {value!r} of type {type(value).__name__}')
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f'`{key}` must be in [0, 1], but got {value!r}')
    return float(value)


class MomentumSchedule:
    """Base class: the momentum (weight on the student) at a given step.

    Args:
        momentum (float): The momentum at step 0, in [0, 1]; the weight given
            to the student (MMEngine convention; the paper's m = 0.99 is
            ``momentum=0.01``).
    """

    def __init__(self, momentum: float) -> None:
        self.momentum = check_unit_interval('momentum', momentum)

    def __call__(self, step: int, total_steps=None) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in vars(self).items())
        return f'{type(self).__name__}({args})'


class ConstantMomentum(MomentumSchedule):
    """The same momentum at every step (MoCo v2, FixMatch, mean teachers).

    Args:
        momentum (float): The weight given to the student, in [0, 1].
    """

    def __call__(self, step: int, total_steps=None) -> float:
        return self.momentum


class CosineMomentum(MomentumSchedule):
    """Cosine annealing of the momentum, as in BYOL and the official STS code.

    ``momentum_k = end - (end - momentum) * (cos(pi * k / K) + 1) / 2``: it
    starts at ``momentum`` and reaches ``end_momentum`` at ``k = K``. With
    ``momentum=0.01, end_momentum=0`` this is the paper's teacher weight
    annealed from 0.99 to 1. It is the formula of mmpretrain's ``CosineEMA``.

    Args:
        momentum (float): The weight given to the student at step 0, in
            [0, 1].
        end_momentum (float): The weight given to the student at the last
            step, in [0, 1]. Defaults to 0.
    """

    def __init__(self, momentum: float, end_momentum: float = 0.0) -> None:
        super().__init__(momentum)
        self.end_momentum = check_unit_interval('end_momentum', end_momentum)

    def __call__(self, step: int, total_steps=None) -> float:
        if not total_steps:
            raise ValueError('CosineMomentum needs the total number of steps, '
                             f'but got total_steps={total_steps!r}')
        factor = (math.cos(math.pi * step / float(total_steps)) + 1) / 2
        return self.end_momentum - (self.end_momentum -
                                    self.momentum) * factor


MOMENTUM_SCHEDULES: Dict[str, Type[MomentumSchedule]] = {
    'constant': ConstantMomentum,
    'cosine': CosineMomentum,
}


def build_momentum_schedule(schedule: str, momentum: float,
                            **kwargs) -> MomentumSchedule:
    """Build a schedule by name.

    Args:
        schedule (str): One of ``MOMENTUM_SCHEDULES`` (``'constant'``,
            ``'cosine'``).
        momentum (float): The weight given to the student at step 0.
        **kwargs: Extra arguments of the schedule, e.g. ``end_momentum``.
    """
    if schedule not in MOMENTUM_SCHEDULES:
        raise ValueError(f'`momentum_schedule` must be one of '
                         f'{sorted(MOMENTUM_SCHEDULES)}, but got {schedule!r}')
    return MOMENTUM_SCHEDULES[schedule](momentum, **kwargs)

"""The STS algorithm in plain PyTorch (no MMEngine import)."""
from .masks import FragmentMaskGenerator, stream_id
from .schedules import (MOMENTUM_SCHEDULES, ConstantMomentum, CosineMomentum,
                        MomentumSchedule, build_momentum_schedule,
                        check_unit_interval)
from .smoother import (GRANULARITIES, NONFINITE_POLICIES,
                       NonFiniteStudentError, SpatialTemporalSmoother,
                       relative_distance)

__all__ = [
    'FragmentMaskGenerator', 'stream_id', 'MOMENTUM_SCHEDULES',
    'ConstantMomentum', 'CosineMomentum', 'MomentumSchedule',
    'build_momentum_schedule', 'check_unit_interval', 'GRANULARITIES',
    'NONFINITE_POLICIES', 'NonFiniteStudentError', 'SpatialTemporalSmoother',
    'relative_distance'
]

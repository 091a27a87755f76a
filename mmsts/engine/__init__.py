from .hooks import SpatialTemporalSmoothingHook
from .runner import TeacherStudentValLoop
from .schedulers import FixMatchCosineLR, FixMatchCosineParamScheduler

__all__ = [
    'SpatialTemporalSmoothingHook', 'TeacherStudentValLoop',
    'FixMatchCosineLR', 'FixMatchCosineParamScheduler'
]

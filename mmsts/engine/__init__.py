from .hooks import KNNMonitorHook, SpatialTemporalSmoothingHook
from .runner import TeacherStudentValLoop
from .schedulers import FixMatchCosineLR, FixMatchCosineParamScheduler

__all__ = [
    'KNNMonitorHook', 'SpatialTemporalSmoothingHook', 'TeacherStudentValLoop',
    'FixMatchCosineLR', 'FixMatchCosineParamScheduler'
]

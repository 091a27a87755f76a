from .averaged_model import (SpatialTemporalSmoothing, host_settings,
                             sts_records)
from .backbones import WideResNet
from .data_preprocessors import MultiBranchDataPreprocessor
from .distill import KDClassifier, kd_loss
from .frozen_teacher import FrozenTeacher
from .semi import FixMatch
from .teacher_student import TeacherStudentClassifier

__all__ = [
    'SpatialTemporalSmoothing', 'host_settings', 'sts_records',
    'MultiBranchDataPreprocessor', 'WideResNet', 'FixMatch', 'FrozenTeacher',
    'KDClassifier', 'kd_loss', 'TeacherStudentClassifier'
]

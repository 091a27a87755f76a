from .averaged_model import SpatialTemporalSmoothing, momentum_schedule_of
from .backbones import WideResNet
from .data_preprocessors import MultiBranchDataPreprocessor
from .semi import FixMatch

__all__ = [
    'SpatialTemporalSmoothing', 'momentum_schedule_of',
    'MultiBranchDataPreprocessor', 'WideResNet', 'FixMatch'
]

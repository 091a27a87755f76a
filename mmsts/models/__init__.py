from .averaged_model import (SpatialTemporalSmoothing, host_settings,
                             sts_records)
from .backbones import WideResNet
from .data_preprocessors import MultiBranchDataPreprocessor
from .semi import FixMatch

__all__ = [
    'SpatialTemporalSmoothing', 'host_settings', 'sts_records',
    'MultiBranchDataPreprocessor', 'WideResNet', 'FixMatch'
]

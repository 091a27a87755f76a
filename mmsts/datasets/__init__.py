from .digits import Digits, digits_split_indices
from .samplers import MultiSourceBatchSampler, MultiSourceSampler
from .semi import LabeledSubset
from .transforms import MultiBranch

__all__ = [
    'Digits', 'digits_split_indices', 'LabeledSubset', 'MultiBranch',
    'MultiSourceBatchSampler', 'MultiSourceSampler'
]

from .digits import Digits, digits_split_indices
from .pseudo_labels import (OneHotLabels, PseudoLabeledDataset,
                            check_selection, dataset_fingerprint,
                            load_pseudo_labels, save_pseudo_labels,
                            select_pseudo_labels)
from .samplers import MultiSourceBatchSampler, MultiSourceSampler
from .semi import LabeledSubset
from .transforms import MultiBranch

__all__ = [
    'Digits', 'digits_split_indices', 'LabeledSubset', 'MultiBranch',
    'MultiSourceBatchSampler', 'MultiSourceSampler', 'PseudoLabeledDataset',
    'OneHotLabels', 'check_selection', 'dataset_fingerprint',
    'load_pseudo_labels', 'save_pseudo_labels', 'select_pseudo_labels'
]

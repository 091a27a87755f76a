from .knn_hook import KNNMonitorHook
from .sts_hook import SpatialTemporalSmoothingHook

__all__ = ['KNNMonitorHook', 'SpatialTemporalSmoothingHook']

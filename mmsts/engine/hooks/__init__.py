from .sts_hook import SpatialTemporalSmoothingHook

__all__ = ['SpatialTemporalSmoothingHook']

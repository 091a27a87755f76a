from .hooks import SpatialTemporalSmoothingHook

__all__ = ['SpatialTemporalSmoothingHook']

from .averaged_model import SpatialTemporalSmoothing, momentum_schedule_of

__all__ = ['SpatialTemporalSmoothing', 'momentum_schedule_of']

from .fixmatch import FixMatch

__all__ = ['FixMatch']

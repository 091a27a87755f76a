from .fixmatch_cosine import FixMatchCosineLR, FixMatchCosineParamScheduler

__all__ = ['FixMatchCosineLR', 'FixMatchCosineParamScheduler']

from .kd_classifier import KDClassifier, kd_loss

__all__ = ['KDClassifier', 'kd_loss']

from .wide_resnet import WideBasicBlock, WideResNet

__all__ = ['WideBasicBlock', 'WideResNet']

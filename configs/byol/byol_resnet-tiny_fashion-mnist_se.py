# BYOL on Fashion-MNIST with Spatial Ensemble alone (SE): p = 0.7 as the STS
# run, constant momentum 1 (the selected tensors are copied from the
# student); otherwise byol_resnet-tiny_fashion-mnist_tma.py.
_base_ = './byol_resnet-tiny_fashion-mnist_tma.py'

custom_hooks = [
    dict(
        type='SpatialTemporalSmoothingHook',
        preserve_prob=0.7,
        momentum=1.0,
        momentum_schedule='constant',
        log_interval=20)
]

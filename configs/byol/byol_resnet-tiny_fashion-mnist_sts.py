# BYOL on Fashion-MNIST with a Spatial-Temporal Smoothing teacher: the TMA
# baseline (byol_resnet-tiny_fashion-mnist_tma.py) with only the smoothing
# changed: each parameter tensor of the teacher is kept with probability 0.7
# (the paper's value for BYOL) and otherwise moved toward the student with
# BYOL's own cosine momentum.
_base_ = './byol_resnet-tiny_fashion-mnist_tma.py'

custom_hooks = [
    dict(
        type='SpatialTemporalSmoothingHook',
        preserve_prob=0.7,
        log_interval=20)
]

# BYOL on the 8x8 digits with a Spatial-Temporal Smoothing teacher: the
# TMA baseline (byol_resnet-tiny_digits_tma.py) with only the smoothing
# changed. At every step each parameter tensor of the teacher is kept with
# probability 0.7 (the paper's value for BYOL) and otherwise moved toward
# the student with BYOL's own cosine momentum.
_base_ = './byol_resnet-tiny_digits_tma.py'

# The teacher reads its statistics at the logger's interval.
custom_hooks = [
    dict(
        type='SpatialTemporalSmoothingHook',
        preserve_prob=0.7,
        log_interval=10)
]

# The TMA (EMA) twin of the STS Noisy Student config: the student smoothed
# by a plain exponential moving average (preserve_prob=0); nothing else
# changed.
_base_ = ['./noisy-student_wrn10-1_sts_1xb64-1k_fashion-mnist-1000labels.py']

custom_hooks = [
    dict(
        type='EMAHook',
        ema_type='SpatialTemporalSmoothing',
        preserve_prob=0.0,
        momentum=0.01)
]

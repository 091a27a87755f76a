# The TMA (EMA) twin of kd_resnet50_sts_8xb32-autoaug_in1k.py: only the
# smoothing differs (preserve_prob=0, a plain exponential moving average).
_base_ = ['./kd_resnet50_sts_8xb32-autoaug_in1k.py']

model = dict(teacher=dict(preserve_prob=0.0))

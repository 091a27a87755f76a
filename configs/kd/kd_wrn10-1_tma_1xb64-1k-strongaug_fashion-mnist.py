# The TMA (EMA) twin of kd_wrn10-1_sts_1xb64-1k-strongaug_fashion-mnist.py:
# preserve_prob=0, nothing else changed.
_base_ = ['./kd_wrn10-1_sts_1xb64-1k-strongaug_fashion-mnist.py']

model = dict(teacher=dict(preserve_prob=0.0))

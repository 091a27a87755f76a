# The TMA (plain EMA) baseline of the digits demo: the STS config with
# preserve_prob=0, nothing else changed.
_base_ = './fixmatch_wrn10-1_sts_1xb16-mu3-1k_digits-40labels.py'

model = dict(teacher=dict(preserve_prob=0.0))

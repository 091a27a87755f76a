# FixMatch, WRN-28-2, CIFAR-10 with 250 labels: the TMA (EMA) baseline, i.e.
# FixMatch's EMA teacher (decay 0.999), the STS config with preserve_prob=0.
_base_ = './fixmatch_wrn28-2_sts_1xb64-mu7-1048k_cifar10-250labels.py'

model = dict(teacher=dict(preserve_prob=0.0))

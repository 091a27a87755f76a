# FixMatch, WRN-28-8, CIFAR-100 with 10000 labels: the TMA (EMA) baseline, i.e.
# FixMatch's EMA teacher (decay 0.999), the STS config with preserve_prob=0.
_base_ = './fixmatch_wrn28-8_sts_1xb64-mu7-1048k_cifar100-10000labels.py'

model = dict(teacher=dict(preserve_prob=0.0))

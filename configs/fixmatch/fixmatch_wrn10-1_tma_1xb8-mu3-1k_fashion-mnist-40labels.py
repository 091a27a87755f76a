# Original FixMatch on Fashion-MNIST, 40 labels, with the TMA (plain EMA) baseline: preserve_prob=0;
# nothing else changed (see the STS config for the settings).
_base_ = './fixmatch_wrn10-1_sts_1xb8-mu3-1k_fashion-mnist-40labels.py'

model = dict(teacher=dict(preserve_prob=0.0))

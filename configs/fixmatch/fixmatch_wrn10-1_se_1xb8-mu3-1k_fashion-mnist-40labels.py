# Original FixMatch on Fashion-MNIST, 40 labels, with Spatial Ensemble alone (SE): momentum=1, the selected fragments are
# copied from the student;
# nothing else changed (see the STS config for the settings).
_base_ = './fixmatch_wrn10-1_sts_1xb8-mu3-1k_fashion-mnist-40labels.py'

model = dict(teacher=dict(momentum=1.0))

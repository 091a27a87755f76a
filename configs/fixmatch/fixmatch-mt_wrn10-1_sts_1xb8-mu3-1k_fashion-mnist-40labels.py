# FixMatch with a mean teacher on Fashion-MNIST, 40 labels: the pseudo-labels
# come from the teacher (pseudo_label_source='teacher'), which is also the
# evaluated model; otherwise as fixmatch_wrn10-1_sts_1xb8-mu3-1k_fashion-mnist-40labels.py.
_base_ = './fixmatch_wrn10-1_sts_1xb8-mu3-1k_fashion-mnist-40labels.py'

model = dict(semi_train_cfg=dict(pseudo_label_source='teacher'))

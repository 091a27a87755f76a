# FixMatch on CIFAR-100 with WRN-28-8 and a Spatial-Temporal Smoothing
# teacher (p = 0.5, teacher weight 0.999); weight decay 1e-3 as in FixMatch.
# The labeled split (num_per_class) is set by the children, e.g.
# ../fixmatch_wrn28-8_sts_1xb64-mu7-1048k_cifar100-400labels.py
_base_ = [
    '../../_base_/datasets/semi_cifar100.py',
    './fixmatch_schedule_1048k.py',
]

model = dict(
    type='FixMatch',
    backbone=dict(type='WideResNet', depth=28, widen_factor=8),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=100,
        in_channels=512,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        init_cfg=dict(type='Xavier', layer='Linear', distribution='normal')),
    # `momentum` is the weight of the student (MMEngine's convention):
    # FixMatch's EMA decay 0.999 is momentum=0.001. preserve_prob=0 is TMA.
    teacher=dict(
        type='SpatialTemporalSmoothing', preserve_prob=0.5, momentum=0.001),
    # The original FixMatch: pseudo-labels from the model being trained
    # (its weak-view predictions, detached); the teacher is the evaluated
    # model. The mean-teacher variant (pseudo-labels from the teacher) is
    # ../fixmatch-meanteacher_*.py.
    semi_train_cfg=dict(
        threshold=0.95, lambda_u=1.0, pseudo_label_source='student'),
    semi_test_cfg=dict(predict_on='teacher'))

optim_wrapper = dict(optimizer=dict(weight_decay=1e-3))

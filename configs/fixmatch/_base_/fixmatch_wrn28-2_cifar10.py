# FixMatch on CIFAR-10 with WRN-28-2 and a Spatial-Temporal Smoothing teacher
# (p = 0.5, teacher weight 0.999). The labeled split (num_per_class) is set by
# the children, e.g.
# ../fixmatch_wrn28-2_sts_1xb64-mu7-1048k_cifar10-40labels.py
_base_ = [
    '../../_base_/datasets/semi_cifar10.py',
    './fixmatch_schedule_1048k.py',
]

model = dict(
    type='FixMatch',
    backbone=dict(type='WideResNet', depth=28, widen_factor=2),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=128,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        init_cfg=dict(type='Xavier', layer='Linear', distribution='normal')),
    # The STS teacher (mmsts.models.SpatialTemporalSmoothing). `momentum` is
    # the weight of the student (MMEngine's convention): FixMatch's EMA decay
    # 0.999 is momentum=0.001. preserve_prob=0 is that EMA ("TMA").
    teacher=dict(
        type='SpatialTemporalSmoothing', preserve_prob=0.5, momentum=0.001),
    # The original FixMatch: pseudo-labels from the model being trained
    # (its weak-view predictions, detached); the teacher is the evaluated
    # model. The mean-teacher variant (pseudo-labels from the teacher) is
    # ../fixmatch-meanteacher_*.py.
    semi_train_cfg=dict(
        threshold=0.95, lambda_u=1.0, pseudo_label_source='student'),
    semi_test_cfg=dict(predict_on='teacher'))

optim_wrapper = dict(optimizer=dict(weight_decay=5e-4))

# BYOL on scikit-learn's 8x8 handwritten digits (1,297 training images) with
# a tiny CIFAR-style ResNet-18, small enough to pretrain on a laptop CPU.
#
# This is the TMA (plain EMA teacher) baseline of the digits demo
# (tools/demo/byol_digits.py): SpatialTemporalSmoothingHook with
# `preserve_prob=0` updates every fragment at every step, which is exactly
# mmpretrain's CosineEMA, and logs the same statistics as the STS run
# (byol_resnet-tiny_digits_sts.py), which differs only in `preserve_prob`.
_base_ = 'mmpretrain::_base_/default_runtime.py'

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

# Mean and std of the training digits, scaled to 0..255; the grey image is
# replicated to 3 channels by the data set, so there is no channel order.
data_preprocessor = dict(
    type='SelfSupDataPreprocessor',
    mean=[78.0, 78.0, 78.0],
    std=[95.7, 95.7, 95.7],
    to_rgb=False)

# BYOL's two asymmetric views, adapted to digits: upsample 8 -> 24 px, crop
# and rotate a little (no flip: a flipped digit is another symbol, or none),
# jitter brightness and contrast (the images are grey, so no saturation or
# hue), blur, and solarize the second view only.
common_view_pipeline = [
    dict(type='Resize', scale=24, interpolation='bilinear'),
    dict(type='RandomResizedCrop', scale=24, crop_ratio_range=(0.5, 1.0)),
    dict(
        type='Rotate',
        magnitude_range=(0, 15),
        magnitude_std='inf',
        pad_val=0,
        prob=0.5,
        interpolation='bilinear'),
    dict(
        type='RandomApply',
        transforms=[dict(type='ColorJitter', brightness=0.4, contrast=0.4)],
        prob=0.8),
]
blur = dict(type='GaussianBlur', magnitude_range=(0.1, 1.0),
            magnitude_std='inf')
view_pipeline1 = common_view_pipeline + [dict(blur, prob=1.0)]
view_pipeline2 = common_view_pipeline + [
    dict(blur, prob=0.1),
    dict(type='Solarize', thr=128, prob=0.2),
]
train_pipeline = [
    dict(
        type='MultiView',
        num_views=[1, 1],
        transforms=[view_pipeline1, view_pipeline2]),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='Digits', split='train', pipeline=train_pipeline))

# A CIFAR-style ResNet-18 (3x3 stem, no max-pool) at a quarter of the width:
# 0.7 M parameters, 128-d features. BN, not SyncBN: this runs on one CPU.
model = dict(
    type='BYOL',
    base_momentum=0.01,  # weight of the student: teacher weight 0.99
    backbone=dict(
        type='ResNet_CIFAR',
        depth=18,
        stem_channels=16,
        base_channels=16,
        norm_cfg=dict(type='BN'),
        zero_init_residual=False),
    neck=dict(
        type='NonLinearNeck',
        in_channels=128,
        hid_channels=256,
        out_channels=64,
        num_layers=2,
        with_bias=True,
        with_last_bn=False,
        with_avg_pool=True),
    head=dict(
        type='LatentPredictHead',
        predictor=dict(
            type='NonLinearNeck',
            in_channels=64,
            hid_channels=256,
            out_channels=64,
            num_layers=2,
            with_bias=True,
            with_last_bn=False,
            with_avg_pool=False),
        loss=dict(type='CosineSimilarityLoss')),
)

# mmpretrain's BYOL uses LARS with a learning rate scaled linearly from
# batch 4096; at batch 64 (lr 0.075, trust coefficient 1e-3) that moves the
# weights by ~1e-4 of their norm per step, far too slow for a run of a few
# hundred steps. Plain SGD with
# momentum learns in a few epochs.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.3, momentum=0.9, weight_decay=1e-4))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.1,
        by_epoch=True,
        begin=0,
        end=1,
        convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, eta_min=0.0),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=8)

# The k-NN monitor (docs/monitoring.md): every 2 epochs (and at the end),
# the teacher's and the student's backbones classify the 500 test digits by
# their 20 nearest neighbours among 500 training digits (evenly spaced;
# weighted k-NN, T = 0.07, test-time views), logged as knn/teacher/top1 and
# knn/student/top1. It costs about 8 % of the training time (measured in
# docs/monitoring.md; with all 1,297 training digits, 14 %). It is a default
# hook (a named entry, like mmpretrain's `visualization`) so that child
# configs keep it when they restate `custom_hooks`, and both runs of the
# demo have it (byol_resnet-tiny_digits_sts.py changes the smoothing only).
# Without it: `cfg.default_hooks.pop('knn_monitor')`.
knn_pipeline = [
    dict(type='Resize', scale=24, interpolation='bilinear'),
    dict(type='PackInputs'),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=8, max_keep_ckpts=1),
    knn_monitor=dict(
        type='KNNMonitorHook',
        train_dataloader=dict(
            batch_size=256,
            num_workers=0,
            dataset=dict(
                type='Digits', split='train', pipeline=knn_pipeline)),
        val_dataloader=dict(
            batch_size=256,
            num_workers=0,
            dataset=dict(type='Digits', split='test',
                         pipeline=knn_pipeline)),
        interval=2,
        k=20,
        temperature=0.07,
        max_samples=500))

# TMA: every fragment is updated at every step (plain EMA, BYOL's teacher).
# The teacher reads its statistics at the logger's interval.
custom_hooks = [
    dict(
        type='SpatialTemporalSmoothingHook',
        preserve_prob=0.0,
        log_interval=10)
]

randomness = dict(seed=0)

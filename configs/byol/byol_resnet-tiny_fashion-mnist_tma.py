# BYOL on Fashion-MNIST (60,000 training images, 28 x 28 grey) with a tiny
# CIFAR-style ResNet-18, small enough for one CPU core: the TMA (plain EMA
# teacher) baseline of the Fashion-MNIST study (docs/studies.md).
# SpatialTemporalSmoothingHook with `preserve_prob=0` is exactly mmpretrain's
# CosineEMA and logs the same statistics as the STS (p = 0.7) and SE runs
# (byol_resnet-tiny_fashion-mnist_{sts,se}.py), which differ only in the hook.
#
# The images are read by mmpretrain's `FashionMNIST` through
# ../_base_/datasets/fashion_mnist.py; the training set is the first
# `num_train` of them (sized for the CPU: docs/studies.md), for
# `max_epochs` epochs.
_base_ = [
    '../_base_/datasets/fashion_mnist.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

num_train = 10000
max_epochs = 2

data_preprocessor = dict(
    _delete_=True,
    type='SelfSupDataPreprocessor',
    mean=_base_.data_preprocessor.mean,
    std=_base_.data_preprocessor.std,
    to_rgb=False)


# BYOL's two asymmetric views for grey 28 x 28 images: random resized crop
# (scale 0.3-1) and horizontal flip; brightness and contrast jitter (p 0.8;
# no saturation or hue: the images are grey) done by torchvision on a PIL
# 'L' image, as mmpretrain's ColorJitter needs 3 channels; blur (always in
# view 1, p 0.1 in view 2) and solarisation (view 2, p 0.2).
def _on_pil(transform):
    return dict(
        type='Compose',
        transforms=[
            dict(type='mmpretrain.NumpyToPIL', to_rgb=False), transform,
            dict(type='mmpretrain.PILToNumpy', to_bgr=False)
        ])


common_view_pipeline = [
    dict(
        type='RandomResizedCrop',
        scale=28,
        crop_ratio_range=(0.3, 1.0),
        backend='pillow'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandomApply',
        transforms=[
            _on_pil(
                dict(
                    type='mmpretrain.torchvision/ColorJitter',
                    brightness=0.4,
                    contrast=0.4))
        ],
        prob=0.8),
]
blur = dict(
    type='GaussianBlur', magnitude_range=(0.1, 1.0), magnitude_std='inf')
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
    _delete_=True,
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type=_base_.dataset_type,
        data_root=_base_.data_root,
        split='train',
        download=False,
        indices=num_train,
        pipeline=train_pipeline))
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None

# A CIFAR-style ResNet-18 (3x3 stem, no max-pool) at a quarter of the
# width, with one input channel: 0.7 M parameters, 128-d features.
model = dict(
    type='BYOL',
    base_momentum=0.01,  # weight of the student: teacher weight 0.99
    backbone=dict(
        type='ResNet_CIFAR',
        depth=18,
        in_channels=1,
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

# SGD with momentum instead of LARS, as in the digits config (LARS at batch
# 64 barely moves the weights in a run of a few hundred steps).
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
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=1,
        eta_min=0.0,
        convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)

# The k-NN monitor (docs/monitoring.md) after every epoch: the teacher's and
# the student's backbones classify 1,000 test images by their 20 nearest
# neighbours among 1,000 training images (evenly spaced, so every class is
# in the bank), logged as knn/teacher/top1 and knn/student/top1. It is a
# named default hook so that the STS and SE configs, which restate
# `custom_hooks`, keep it.
knn_loader = dict(
    batch_size=256,
    num_workers=0,
    dataset=dict(
        type=_base_.dataset_type,
        data_root=_base_.data_root,
        download=False,
        pipeline=[dict(type='PackInputs')]))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    # Every epoch, for --resume; only the latest is kept.
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1),
    knn_monitor=dict(
        type='KNNMonitorHook',
        train_dataloader=dict(
            knn_loader,
            dataset=dict(knn_loader['dataset'], split='train')),
        val_dataloader=dict(
            knn_loader,
            dataset=dict(
                knn_loader['dataset'], split='test', test_mode=True)),
        interval=1,
        k=20,
        temperature=0.07,
        max_samples=1000))

# TMA: every fragment is updated at every step (plain EMA, BYOL's teacher).
custom_hooks = [
    dict(
        type='SpatialTemporalSmoothingHook',
        preserve_prob=0.0,
        log_interval=20)
]

randomness = dict(seed=0, deterministic=True)

# Linear probe of a BYOL-pretrained tiny ResNet on Fashion-MNIST
# (byol_resnet-tiny_fashion-mnist_*.py): the backbone is frozen (weights and
# BN statistics); a linear classifier on its 128-d average-pooled features,
# normalised by a BatchNorm without affine parameters (MAE's linear probe),
# is trained on the first `num_train` training images and evaluated once, at
# the end, on the first `num_val` test images. Sized for the CPU
# (docs/studies.md).
#
# Set the checkpoint, and the prefix of the backbone in it:
#   student: model.backbone.init_cfg.prefix=backbone.          (default)
#   teacher: model.backbone.init_cfg.prefix=target_net.module.0.
# e.g.
#   python tools/train.py \
#       configs/byol/benchmarks/linear-probe_resnet-tiny_fashion-mnist.py \
#       --cfg-options model.backbone.init_cfg.checkpoint=<byol checkpoint> \
#       model.backbone.init_cfg.prefix=target_net.module.0.
_base_ = [
    '../../_base_/datasets/fashion_mnist.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

num_train = 10000
num_val = 5000
max_epochs = 2

# No augmentation: the frozen features of the 28 x 28 images.
train_dataloader = dict(
    batch_size=128,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
    dataset=dict(indices=num_train))
val_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(indices=num_val))
test_dataloader = val_dataloader

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ResNet_CIFAR',
        depth=18,
        in_channels=1,
        stem_channels=16,
        base_channels=16,
        norm_cfg=dict(type='BN'),
        zero_init_residual=False,
        frozen_stages=4,  # the stem and all 4 stages: a linear probe
        init_cfg=dict(type='Pretrained', checkpoint='', prefix='backbone.')),
    neck=[
        dict(type='GlobalAveragePooling'),
        dict(type='ClsBatchNormNeck', input_features=128),
    ],
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=128,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, )))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0))
param_scheduler = [
    dict(
        type='CosineAnnealingLR',
        by_epoch=True,
        begin=0,
        eta_min=0.0,
        convert_to_iter_based=True)
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1))

randomness = dict(seed=0, deterministic=True)

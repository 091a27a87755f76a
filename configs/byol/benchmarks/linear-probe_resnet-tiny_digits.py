# Linear probe of a BYOL-pretrained tiny ResNet on the 8x8 digits: the
# backbone is frozen (weights and BN statistics); a linear classifier on its
# 128-d average-pooled features, normalised by a BatchNorm without affine
# parameters as in MAE's linear probes (so one learning rate suits any
# feature scale), is trained on the 1,297 training digits; top-1 is measured
# on the 500 test digits.
#
# Set the checkpoint, and the prefix of the backbone in it:
#   student: model.backbone.init_cfg.prefix=backbone.          (default)
#   teacher: model.backbone.init_cfg.prefix=target_net.module.0.
# e.g. (tools/demo/byol_digits.py runs all the probes of its two runs)
#   python tools/train.py \
#       configs/byol/benchmarks/linear-probe_resnet-tiny_digits.py \
#       --cfg-options model.backbone.init_cfg.checkpoint=<byol checkpoint> \
#       model.backbone.init_cfg.prefix=target_net.module.0.
_base_ = 'mmpretrain::_base_/default_runtime.py'

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

data_preprocessor = dict(
    type='ClsDataPreprocessor',
    num_classes=10,
    mean=[78.0, 78.0, 78.0],
    std=[95.7, 95.7, 95.7],
    to_rgb=False)

# No augmentation: the frozen features of the 24-px upsampled digits.
pipeline = [
    dict(type='Resize', scale=24, interpolation='bilinear'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='Digits', split='train', pipeline=pipeline))
val_dataloader = dict(
    batch_size=250,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='Digits', split='test', pipeline=pipeline))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ResNet_CIFAR',
        depth=18,
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
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, eta_min=0.0)
]
train_cfg = dict(by_epoch=True, max_epochs=10, val_interval=10)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=10, max_keep_ckpts=1))

randomness = dict(seed=0)
